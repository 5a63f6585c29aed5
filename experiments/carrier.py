"""Figure family 'carrier' (configs/carrier.toml).

python experiments/carrier.py [--models KEYS] [--quick]
"""

import sys

from common import main

if __name__ == "__main__":
    sys.exit(main("carrier"))
