# Shared by the scripts in scripts/: package installation and small helpers.
# Source it; it does nothing by itself.

as_root() {
	if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
# need_packages PKG...: installs the Debian packages that are not installed yet.
need_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	echo "installing ${missing[*]}" >&2
	if ((!apt_updated)); then
		as_root apt-get update -qq >&2
		apt_updated=1
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# listed_packages: the packages of scripts/lib/packages, one a line.
listed_packages() {
	sed -e 's/#.*//' "$(dirname "${BASH_SOURCE[0]}")/packages" | awk 'NF {print $1}'
}

# need_tools: installs every package of scripts/lib/packages that is not installed yet, so that
# every script here has every program any of them runs.
need_tools() {
	local packages
	mapfile -t packages < <(listed_packages)
	need_packages "${packages[@]}"
}

# need_cargo: a Rust toolchain through rustup when none is on PATH.
need_cargo() {
	[[ -f $HOME/.cargo/env ]] && . "$HOME/.cargo/env"
	command -v cargo >/dev/null && return 0
	need_packages curl ca-certificates
	echo "installing the Rust toolchain with rustup" >&2
	curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt >&2
	. "$HOME/.cargo/env"
}

# need_python_tool PACKAGE==VERSION: a PyPI tool in a virtual environment of its own under
# target/tools (nothing installed system-wide); prints the environment's bin directory.
need_python_tool() {
	local spec=$1 name=${1%%==*}
	local venv
	venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/tools/$name"
	if [[ ! -x $venv/bin/$name ]] || ! "$venv/bin/pip" show -q "$name" 2>/dev/null | grep -q "^Version: ${spec#*==}$"; then
		echo "installing $spec from PyPI into $venv" >&2
		rm -rf "$venv"
		python3 -m venv "$venv" >&2
		"$venv/bin/pip" install -q "$spec" >&2
	fi
	echo "$venv/bin"
}
