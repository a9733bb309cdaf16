# Everything installs itself: `make test` and `make demo` work on a fresh machine.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
APT_PKGS := qemu-system-x86 qemu-utils linux-image-amd64 busybox-static fio cpio attr acl kmod gcc libc6-dev

.PHONY: test demo deps venv bench clean

deps:
	@bash scripts/install-deps.sh $(APT_PKGS)

$(VENV)/.installed: pyproject.toml
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
