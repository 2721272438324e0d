import sys

from photon.cli import main

sys.exit(main())
