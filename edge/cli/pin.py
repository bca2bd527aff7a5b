"""`sonoedge pin set`: the device PIN for the midwife's page, read from standard input."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.cli import CONFIG_HELP
from edge.config import DeviceSettings, load_settings
from edge.web.auth import PIN_MAX, PIN_MIN, PinError, check_pin_text, write_pin
from edge.web.tls import kept_fingerprint


def _set(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, {"device": {"state_dir": args.state_dir}})
    state_dir = Path(settings.device.state_dir)
    if sys.stdin.isatty():
        import getpass

        pin = getpass.getpass(f"new device PIN ({PIN_MIN}-{PIN_MAX} characters): ")
        again = getpass.getpass("again: ")
        if pin != again:
            raise PinError("the two PINs differ; nothing was changed")
    else:
        pin = sys.stdin.readline(PIN_MAX + 2).rstrip("\r\n")
    path = write_pin(state_dir, check_pin_text(pin))
    print(f"PIN set: a salted scrypt hash in {path}; a running device takes it at its "
          f"next start")
    # what the browser will show for the page's certificate, to compare before typing the PIN
    found = kept_fingerprint(settings.web, state_dir)
    if found is not None:
        print(f"the page's TLS certificate ({found[1]}): SHA-256 {found[0]}")
    elif settings.web.tls == "self-signed":
        print("the page's TLS certificate is made at the first `sonoedge run --web`; its "
              "SHA-256 fingerprint is in that start-up line")
    return 0


def add_parser(verbs) -> None:
    pin = verbs.add_parser("pin", help="the device PIN for the web page")
    actions = pin.add_subparsers(dest="pin_action", required=True)
    setter = actions.add_parser("set", help="set the PIN, read from standard input")
    setter.add_argument("--state-dir", help=f"default: the config's [device] state_dir "
                                            f"({DeviceSettings().state_dir})")
    setter.add_argument("--config", type=Path, help=CONFIG_HELP)
    setter.set_defaults(func=_set)
