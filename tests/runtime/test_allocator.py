"""The allocator policy applies on glibc and is not applied by importing the library."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from nonuniform.runtime.allocator import configure_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_configure_allocator_applies_on_glibc() -> None:
    assert configure_allocator() is True


def test_importing_the_library_does_not_configure_the_allocator() -> None:
    code = (
        "import ctypes.util\n"
        "calls = []\n"
        "find = ctypes.util.find_library\n"
        "ctypes.util.find_library = lambda n: calls.append(n) or find(n)\n"
        "import nonuniform, nonuniform.engine.bounds, nonuniform.certify.boxes\n"
        "assert 'c' not in calls, calls\n"
        "nonuniform.configure_allocator()\n"
        "assert 'c' in calls, calls\n"  # the probe sees a call when there is one
    )
    subprocess.run([sys.executable, "-c", code], check=True)
