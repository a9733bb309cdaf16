# Everything installs itself: `make test` and `make demo` work on a fresh machine.
# The venv's interpreter: Debian's own CPython when it is 3.11 or newer, else
# the python3 on PATH. Debian builds it with PGO and LTO and links it
# statically; a plain source build (pyenv's) serves a request 10-20 % slower.
SYSTEM_PY := /usr/bin/python3
PY      ?= $(shell $(SYSTEM_PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $(SYSTEM_PY) || echo python3)
VENV    := .venv
VPY     := $(VENV)/bin/python
APT_PKGS := qemu-system-x86 qemu-utils linux-image-amd64 busybox-static fio cpio attr acl kmod gcc libc6-dev python3-dev python3-venv

.PHONY: test demo deps venv bench clean

deps:
	@bash scripts/install-deps.sh $(APT_PKGS)

$(VENV)/.installed: pyproject.toml setup.py pyvirtiofsd/device/tablewalk.c pyvirtiofsd/device/_tablewalk_build.py
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: deps venv
	$(VPY) -m pytest -v tests qemu-tests

demo: deps venv
	$(VPY) qemu-tests/demo.py

bench: deps venv
	$(VPY) bench/run.py

clean:
	rm -rf $(VENV) qemu-tests/.build *.egg-info
