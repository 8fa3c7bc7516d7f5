"""``python -m appliance.testing.modem --profile huawei``: an emulated modem until Ctrl-C."""

import sys

from .emulator import main

sys.exit(main())
