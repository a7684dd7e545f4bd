"""The machine id an activation is registered under (contract: 1-128 of A-Z a-z 0-9 . _ : -).

The default is stable for one OS user on one host, as Katalon's is, and reveals neither: a hash of
the operating system's host id and the user name, so the portal's machine list can tell machines
apart without learning who or where they are.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket
import subprocess
import sys
import uuid

MACHINE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Keeps our ids apart from any other program's hash of the same host id.
NAMESPACE = "katalon-license machine id v1"
LINUX_HOST_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def default_machine_id() -> str:
    digest = hashlib.sha256(f"{NAMESPACE}\0{host_id()}\0{user_name()}".encode()).hexdigest()
    return digest[:40]


def host_id() -> str:
    """The operating system's own id for this installation; the hostname and hardware address
    when there is none (a container without /etc/machine-id, say)."""
    for read in (_linux_host_id, _macos_host_id, _windows_host_id):
        value = read()
        if value:
            return value
    return f"{socket.gethostname()}/{uuid.getnode():012x}"


def user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # A container user with no passwd entry and no USER variable still has a uid.
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _linux_host_id() -> str:
    for path in LINUX_HOST_ID_FILES:
        try:
            with open(path, encoding="ascii", errors="replace") as file:
                value = file.read().strip()
        except OSError:
            continue
        # systemd writes "uninitialized" into images that have not booted yet.
        if value and value != "uninitialized":
            return value
    return ""


def _macos_host_id() -> str:
    if sys.platform != "darwin":
        return ""
    try:
        output = subprocess.run(
            ["/usr/sbin/ioreg", "-rd1", "-c", "IOPlatformExpertDevice"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r'"IOPlatformUUID" = "([^"]+)"', output)
    return match.group(1) if match else ""


def _windows_host_id() -> str:
    if sys.platform != "win32":
        return ""
    try:
        import winreg

        with winreg.OpenKey(
            winreg.HKEY_LOCAL_MACHINE,
            r"SOFTWARE\Microsoft\Cryptography",
            0,
            winreg.KEY_READ | winreg.KEY_WOW64_64KEY,
        ) as key:
            return str(winreg.QueryValueEx(key, "MachineGuid")[0])
    except OSError:
        return ""
