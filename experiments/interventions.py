"""Figure family 'interventions' (configs/interventions.toml).

python experiments/interventions.py [--models KEYS] [--quick]
"""

import sys

from common import main

if __name__ == "__main__":
    sys.exit(main("interventions"))
