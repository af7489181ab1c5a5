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

# mpi_packages: prints the Debian packages the MPI build still lacks. Each check tests for exactly
# the file or command the build needs: mpi-sys runs `mpicc` and includes mpi.h; its bindgen loads
# libclang through the unversioned libclang.so (libclang-dev; the image's libclang-cpp.so is a
# different library) and reads clang's own stddef.h.
mpi_packages() {
    command -v mpirun >/dev/null || echo openmpi-bin
    { command -v mpicc >/dev/null && { exists /usr/include/x86_64-linux-gnu/mpi/mpi.h \
        || exists /usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h; }; } || echo libopenmpi-dev
    { exists '/usr/lib/llvm-*/lib/libclang.so' && exists '/usr/lib/llvm-*/lib/clang/*/include/stddef.h' \
        && command -v clang >/dev/null; } || echo libclang-dev clang
}

# The MPI tests' cargo arguments. `--workspace` keeps cargo's feature resolution the same as in
# the plain `cargo test --workspace` run, so every dependency (burn above all) is reused and only
# the crates that the `mpi` feature changes are compiled again; `-p` would resolve features anew
# and build the whole dependency tree a second time (which once filled CI's disk).
MPI_TEST_ARGS=(--workspace --features timeprest/mpi --test cli_mpi --bench transfer)
