import sys

from cifartune.cli.main import main

sys.exit(main())
