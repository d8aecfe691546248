"""The environment variables the paths consult on every call are read as ``os.environ``
holds them at that moment."""

from __future__ import annotations

import os

import pytest

from mibounds import _environ
from mibounds._environ import setting


def test_a_setting_is_what_os_environ_holds_at_each_read(monkeypatch):
    name = "MIBOUNDS_TEST_SETTING"
    monkeypatch.delenv(name, raising=False)
    assert setting(name) == "" and setting(name, "0") == "0"
    monkeypatch.setenv(name, "sweep")
    assert setting(name) == "sweep" == os.environ.get(name)
    monkeypatch.setenv(name, " dense ")  # changed, not only added
    assert setting(name) == " dense "
    os.environ[name] = "é"  # as os.environ decodes it
    assert setting(name) == os.environ[name] == "é"
    del os.environ[name]
    assert setting(name, "default") == "default"
    assert setting("PATH") == os.environ.get("PATH", "")


def test_a_replaced_os_environ_is_asked_directly(monkeypatch):
    monkeypatch.setattr(os, "environ", {"MIBOUNDS_TEST_SETTING": "1"})
    assert setting("MIBOUNDS_TEST_SETTING") == "1"
    assert setting("MIBOUNDS_TEST_UNSET", "x") == "x"


def test_a_python_without_the_table_asks_os_environ(monkeypatch):
    monkeypatch.setattr(_environ, "_TABLE", None)
    monkeypatch.setenv("MIBOUNDS_TEST_SETTING", "2")
    assert setting("MIBOUNDS_TEST_SETTING") == "2"


@pytest.mark.parametrize("value", ["", "0", "1"])
def test_the_interpreter_setting_is_read_at_each_call(monkeypatch, value):
    from mibounds.kernels import selfcheck, triton_kernels

    monkeypatch.setattr(selfcheck, "_TRITON_SETTING", [True])
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert selfcheck.triton_on_cpu() is (value == "1" and triton_kernels.HAS_TRITON)
