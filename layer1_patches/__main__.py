import sys

from layer1_patches.cli import main

sys.exit(main())
