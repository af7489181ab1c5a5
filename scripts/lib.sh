# Helpers shared by scripts/test and scripts/test-mpi (sourced, not run).

# phase MESSAGE: one line that says what the next minutes are spent on.
phase() {
    echo "==> $*" >&2
}

# install_packages WHY PACKAGE...: apt-get install the packages (nothing when none are given),
# saying which and why first.
install_packages() {
    local why="$1"
    shift
    [ $# -gt 0 ] || return 0
    phase "installing $* (needed by $why)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ -z "${TIMEPREST_APT_UPDATED:-}" ]; then
        $sudo apt-get update -qq
        export TIMEPREST_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}

# exists GLOB: true when at least one path matches GLOB.
exists() {
    compgen -G "$1" >/dev/null
}
