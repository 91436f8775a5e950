import sys

from layer3_inference.cli import main

sys.exit(main())
