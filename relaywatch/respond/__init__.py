"""Acting on decisions: the blocks kept in Postfix's maps, held mail, enforcement checks, notices."""
