import sys

from kotune.cli import main

sys.exit(main())
