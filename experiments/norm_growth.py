"""Figure family 'norm_growth' (configs/norm_growth.toml).

python experiments/norm_growth.py [--models KEYS] [--quick]
"""

import sys

from common import main

if __name__ == "__main__":
    sys.exit(main("norm_growth"))
