"""The katalon-license command line: parsing, configuration, and the sysexits code each outcome
exits with (errors.py). `run` lives in runner.py, the engine API calls in licensing.py."""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import sys
import traceback
import urllib.parse
from pathlib import Path

from . import __version__
from .durations import format_duration, parse_duration
from .errors import EX_SOFTWARE, EX_UNAVAILABLE, ClientError, Interrupted, UsageError
from .licensing import MAX_WAIT_SECONDS, SESSION_ID, ActivationRequest, Licensing
from .machine import MACHINE_ID, default_machine_id
from .offline import require_cryptography, verify
from .output import Output
from .portal import Portal, display_url
from .runner import RunOptions, SignalCatcher, run, take_license

ORG_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")
# Printable ASCII without spaces: anything else cannot go into an HTTP header as it is.
API_KEY = re.compile(r"[\x21-\x7e]{1,512}")
PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]*")
DEFAULT_CONNECT_TIMEOUT = 120
DEFAULT_KILL_AFTER = 10

DESCRIPTION = """\
Takes a Katalon license from a Katalon Admin portal, keeps it while a command runs, and gives it
back however the command ends. Configure it with KATALON_ADMIN_URL and KATALON_API_KEY."""

EPILOG = """\
exit codes: run exits with the command's own code; otherwise 0 ok, 64 bad usage or request,
65 offline license does not verify, 69 no license (quota, wait over, license lost with
--stop-on-loss), 75 portal unreachable for --connect-timeout, 76 not the portal's API or TLS failed,
77 API key refused or not licensed, 78 missing dependency, 126/127 command not runnable/found."""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # No abbreviations: `--api kat_...` must not be taken for --api-key unnoticed by the redaction.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def duration(minimum: int, maximum: int):
    def parse(text: str) -> int:
        try:
            seconds = parse_duration(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        if not minimum <= seconds <= maximum:
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: from {format_duration(minimum)} to {format_duration(maximum)}"
            )
        return seconds

    return parse


def matching(pattern: re.Pattern, what: str):
    def parse(text: str) -> str:
        if not pattern.fullmatch(text):
            raise argparse.ArgumentTypeError(f"{text[:140]!r} is not a valid {what}")
        return text

    return parse


def add_common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes, before the command or after it. After it they are
    SUPPRESSed when absent, so they do not undo the same option given before it."""

    def default(value):
        return argparse.SUPPRESS if suppress else value

    connection = parser.add_argument_group("portal")
    connection.add_argument("--url", default=default(None), help="the portal's address (default: $KATALON_ADMIN_URL)")
    connection.add_argument(
        "--api-key",
        default=default(None),
        help="your API key (default: $KATALON_API_KEY, which is better: a flag shows in the process list)",
    )
    connection.add_argument(
        "--connect-timeout",
        type=duration(0, 86_400),
        default=default(DEFAULT_CONNECT_TIMEOUT),
        metavar="DURATION",
        help="how long to keep retrying while the portal is unreachable or busy (default: 2m)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="log each request (never the key)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="print only warnings and errors"
    )


def build_parser() -> Parser:
    common = Parser(add_help=False)
    add_common_options(common, suppress=True)

    licensing = Parser(add_help=False)
    options = licensing.add_argument_group("license")
    options.add_argument("--product", type=str.upper, choices=["RE", "KSE"], default="RE", help="default: RE")
    options.add_argument("--org", type=matching(ORG_ID, "organization id"), help="organization id (-orgID)")
    options.add_argument(
        "--machine-id",
        type=matching(MACHINE_ID, "machine id (1-128 of A-Z a-z 0-9 . _ : -)"),
        help="default: a hash of this host's id and your user name",
    )
    options.add_argument(
        "--ephemeral", action="store_true", help="deregister the machine when its session ends (CI containers)"
    )
    options.add_argument(
        "--release-previous",
        action="store_true",
        help="first end your earlier sessions of the product on this machine (-licenseRelease=true)",
    )
    options.add_argument(
        "--wait",
        type=duration(1, MAX_WAIT_SECONDS),
        metavar="DURATION",
        help="wait in line up to this long (90s, 30m, 2h) when no license is free; without it, fail at once",
    )

    parser = Parser(
        prog="katalon-license",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_common_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True

    run_parser = commands.add_parser(
        "run",
        parents=[common, licensing],
        help="run a command under a license: katalon-license run [options] -- COMMAND...",
        usage="%(prog)s [options] -- COMMAND [ARGUMENT...]",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_parser.add_argument(
        "--stop-on-loss", action="store_true", help="stop the command if the portal ends its session"
    )
    run_parser.add_argument(
        "--kill-after",
        type=duration(0, 3600),
        default=DEFAULT_KILL_AFTER,
        metavar="DURATION",
        help="with --stop-on-loss: SIGKILL this long after SIGTERM (default: 10s)",
    )
    commands.add_parser("activate", parents=[common, licensing], help="take a license; print the answer as JSON")
    for name, what in (("heartbeat", "renew a session's lease"), ("release", "end a session, freeing its license")):
        sub = commands.add_parser(name, parents=[common], help=f"{what}; print the answer as JSON")
        sub.add_argument("session_id", type=matching(SESSION_ID, "session id (s_...)"), metavar="SESSION_ID")
    commands.add_parser("organizations", parents=[common], help="list your organizations with licenses, as JSON")
    offline = commands.add_parser(
        "verify-offline",
        parents=[common],
        help="check an offline license file's signature (needs the cryptography package)",
    )
    offline.add_argument("file", type=Path, metavar="FILE")
    offline.add_argument(
        "--public-key", type=Path, metavar="FILE", help="the portal's public key (PEM) instead of asking the portal"
    )
    return parser


def split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """The client's own arguments, and the command after `--` for run."""
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, None


def secrets_in(argv: list[str]) -> list[str]:
    """Every API key this process could print by mistake: the environment's and any given by flag,
    known before parsing so that even a parse error cannot show one."""
    found = [os.environ.get("KATALON_API_KEY", "")]
    for index, argument in enumerate(argv):
        if argument == "--api-key" and index + 1 < len(argv):
            found.append(argv[index + 1])
        elif argument.startswith("--api-key="):
            found.append(argument.split("=", 1)[1])
    return [secret.strip() for secret in found if len(secret.strip()) >= 4]


def portal_url(args) -> str:
    url = (args.url or os.environ.get("KATALON_ADMIN_URL") or "").strip()
    if not url:
        raise UsageError("no portal address: set KATALON_ADMIN_URL (or --url), e.g. https://licenses.example.com")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"the portal address must be an http:// or https:// URL, not {display_url(url)[:200]!r}")
    if parts.username or parts.password:
        raise UsageError(
            "the portal address must not hold a user name or password; the API key goes in KATALON_API_KEY"
        )
    if parts.query or parts.fragment:
        raise UsageError("the portal address must not have a ?query or #fragment")
    return url


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_portal(args, output: Output, *, authenticated: bool = True) -> Portal:
    url = portal_url(args)
    key = args.api_key if args.api_key is not None else os.environ.get("KATALON_API_KEY")
    key = (key or "").strip()
    if authenticated:
        if not key:
            raise UsageError("no API key: set KATALON_API_KEY (or --api-key); create one on the portal's API keys page")
        if not API_KEY.fullmatch(key):
            raise UsageError("the API key holds spaces or characters that cannot be sent; copy it again")
        host = urllib.parse.urlsplit(url).hostname or ""
        if urllib.parse.urlsplit(url).scheme == "http" and not is_loopback(host):
            output.warning(f"{display_url(url)} is plain http: the API key crosses the network unencrypted")
    return Portal(url, key or None, log=output.debug)


def activation_request(args) -> ActivationRequest:
    hostname = socket.gethostname()[:255]
    return ActivationRequest(
        product=args.product,
        machine_id=args.machine_id or default_machine_id(),
        org_id=args.org,
        hostname=hostname if PRINTABLE.fullmatch(hostname) else "",
        release_previous=args.release_previous,
        ephemeral=args.ephemeral,
    )


def make_licensing(args, output: Output) -> Licensing:
    return Licensing(make_portal(args, output), connect_timeout=args.connect_timeout, notify=output.info)


def command_run(args, command: list[str], output: Output) -> int:
    if not command:
        raise UsageError("no command to run: katalon-license run [options] -- COMMAND [ARGUMENT...]")
    options = RunOptions(
        request=activation_request(args),
        command=command,
        wait=args.wait,
        stop_on_loss=args.stop_on_loss,
        kill_after=args.kill_after,
    )
    return run(make_licensing(args, output), options, output)


def command_activate(args, output: Output) -> int:
    licensing = make_licensing(args, output)
    with SignalCatcher() as signals:
        licensing.sleep = signals.sleep
        granted = take_license(licensing, activation_request(args), args.wait, signals)
    output.json(granted.body)
    return 0


def command_session(args, output: Output) -> int:
    licensing = make_licensing(args, output)
    call = licensing.heartbeat if args.command == "heartbeat" else licensing.release
    output.json(call(args.session_id, budget=args.connect_timeout).body)
    return 0


def command_organizations(args, output: Output) -> int:
    portal = make_portal(args, output)
    response = portal.call(
        "GET", "engine/organizations", budget=args.connect_timeout, notify=output.info, what="the organizations"
    )
    output.json(response.body)
    return 0


def command_verify_offline(args, output: Output) -> int:
    require_cryptography()
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {args.file}: {getattr(error, 'strerror', None) or error}") from None
    if args.public_key is not None:
        try:
            pem = args.public_key.read_bytes()
        except OSError as error:
            raise UsageError(f"cannot read {args.public_key}: {error.strerror}") from None
    else:
        portal = make_portal(args, output, authenticated=False)
        response = portal.call(
            "GET",
            "offline-licenses/public-key",
            budget=args.connect_timeout,
            notify=output.info,
            what="the public key",
            accept="application/x-pem-file",
            authenticated=False,
        )
        pem = response.body if isinstance(response.body, bytes) else str(response.body).encode()
    result = verify(text, pem)
    output.json(result)
    if result["expired"]:
        output.error(f"the offline license's signature is valid, but it expired at {result['payload']['expires_at']}")
        return EX_UNAVAILABLE
    return 0


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str] | None]:
    own_arguments, command = split_command(argv)
    args, unknown = build_parser().parse_known_args(own_arguments)
    if args.command == "run" and command is None:
        # Not echoed: a command line often carries secrets of its own (katalonc -apiKey=...).
        raise UsageError("put the command after --: katalon-license run [options] -- COMMAND [ARGUMENT...]")
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (see katalon-license {args.command} --help)")
    if command is not None and args.command != "run":
        raise UsageError("only run takes a command after --")
    return args, command


COMMANDS = {
    "activate": command_activate,
    "heartbeat": command_session,
    "release": command_session,
    "organizations": command_organizations,
    "verify-offline": command_verify_offline,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    output = Output(secrets=secrets_in(argv))
    try:
        args, command = parse(argv)
        output.verbose, output.quiet = args.verbose, args.quiet
        if args.command == "run":
            return command_run(args, command or [], output)
        return COMMANDS[args.command](args, output)
    except ClientError as failure:
        if not isinstance(failure, Interrupted):
            output.error(str(failure))
        return failure.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as failure:  # the one place that turns a bug into a line and an exit code
        if output.verbose:
            for line in traceback.format_exc().splitlines():
                output.debug(line)
        output.error(f"internal error ({type(failure).__name__}: {failure}); please report it")
        return EX_SOFTWARE
