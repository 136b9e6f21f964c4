"""python -m relaywatch"""

from relaywatch.cli import main

main()
