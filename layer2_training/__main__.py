import sys

from layer2_training.cli import main

sys.exit(main())
