"""Test doubles and the demo: the wing of the package the running box never imports.

Shipped inside ``appliance`` (as gpiozero ships its MockFactory) so ``centralka demo`` works
from an installed package, but only ``centralka demo``/``demo-gsm``/``phone`` and the tests and
benches import it; nothing under ``appliance/`` outside this folder may (tests/test_layers.py
checks it, and that importing the core leaves ``appliance.testing`` out of ``sys.modules``).

    modem/             the pty modem emulator: shared AT machinery, one file per modem profile
    phone.py           the simulated SIP phone (its own process, its own pjsua2 endpoint)
    mobile_network.py  the demo's mobile network: the emulated modem's radio side on a socket
    demo.py            ``make demo``: the box with simulated staff phones and an emulated modem
"""
