"""Figure family 'lenses' (configs/lenses.toml).

python experiments/lenses.py [--models KEYS] [--quick]
"""

import sys

from common import main

if __name__ == "__main__":
    sys.exit(main("lenses"))
