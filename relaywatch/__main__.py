"""python -m relaywatch"""

from .cli import main

main()
