import sys

from fastgp.cli import main

sys.exit(main())
