"""relaywatch: notice open-relay abuse in a Postfix log and shut it down."""
