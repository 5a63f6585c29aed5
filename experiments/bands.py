"""Figure family 'bands' (configs/bands.toml).

python experiments/bands.py [--models KEYS] [--quick]
"""

import sys

from common import main

if __name__ == "__main__":
    sys.exit(main("bands"))
