"""Figure family 'controls' (configs/controls.toml).

python experiments/controls.py [--models KEYS] [--quick]
"""

import sys

from common import main

if __name__ == "__main__":
    sys.exit(main("controls"))
