"""Figure family 'sequence_spectra' (configs/sequence_spectra.toml).

python experiments/sequence_spectra.py [--models KEYS] [--quick]
"""

import sys

from common import main

if __name__ == "__main__":
    sys.exit(main("sequence_spectra"))
