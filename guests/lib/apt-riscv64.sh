# shellcheck shell=bash
# apt-riscv64.sh: fetch Debian packages of a foreign architecture (riscv64 by default) with
# apt, in a private apt directory, without touching the host's package state.
#
# Source it from a bash script, then:
#
#   apt_rv_init "$dir"                       # private apt dir (state, cache, config)
#   apt_rv_update trixie trixie-updates trixie-security
#                                            # index fetch, with fallbacks (see below)
#   apt_rv_version busybox-static            # candidate version
#   apt_rv_resolve_meta linux-image-riscv64 '^linux-image-[0-9]'
#                                            # versioned package a metapackage depends on
#   apt_rv_download "$debs" busybox-static opensbi
#                                            # prints the .deb paths, one a line
#   apt_rv_unpack "$deb" "$root"             # dpkg-deb -x
#   apt_rv_get ... / apt_rv_cache ...        # apt-get / apt-cache with the private config
#
# The mirror is the one the host's own apt sources use for Debian's main archive (see
# apt_rv_mirror_uri); POPEK_DEBIAN_MIRROR and POPEK_DEBIAN_SECURITY_MIRROR override it.
#
# Settings (environment, read when the functions run):
#   APT_RV_ARCH         architecture (riscv64)
#   APT_RV_COMPONENTS   components ("main")
#   APT_RV_KEYRING      keyring for Signed-By (/usr/share/keyrings/debian-archive-keyring.gpg)
#   APT_RV_HOST_APT     the host's apt configuration directory, for the mirror (/etc/apt)
#   POPEK_APT_STRICT=1  never fall back to an unauthenticated index or to trusted=yes
#
# Needs: bash, apt-get, apt-cache, dpkg-deb, sha256sum. gpg is used when present.

[[ -n ${_APT_RV_SH_LOADED:-} ]] && return 0
_APT_RV_SH_LOADED=1

: "${APT_RV_ARCH:=riscv64}"
: "${APT_RV_COMPONENTS:=main}"
: "${APT_RV_KEYRING:=/usr/share/keyrings/debian-archive-keyring.gpg}"

# Set after apt_rv_update: the suites whose indexes are in use, and how they were checked:
# "signed" (Release signature verified with APT_RV_KEYRING), "trusted" (trusted=yes: no
# signature check, hashes still checked against the Release file) or "unverified" (index
# fetched directly, checked against nothing).
APT_RV_SUITES_USED=()
APT_RV_TRUST=""

apt_rv_log()  { printf 'apt-riscv64: %s\n' "$*" >&2; }
apt_rv_warn() { printf 'apt-riscv64: WARNING: %s\n' "$*" >&2; }
apt_rv_die()  { printf 'apt-riscv64: error: %s\n' "$*" >&2; return 1; }

# Debian release names a host's sources may name; suites with other names (nodistro,
# cloud-sdk, jammy...) belong to third-party repositories and are never taken as the mirror.
_apt_rv_is_debian_suite() {
    local s=${1%/updates}
    s=${s%-security}; s=${s%-updates}; s=${s%-proposed-updates}
    s=${s%-backports-sloppy}; s=${s%-backports}
    local host_codename=""
    if [[ -r /etc/os-release ]]; then
        host_codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    fi
    case $s in
        stable|oldstable|oldoldstable|testing|unstable|sid|experimental) return 0 ;;
        buster|bullseye|bookworm|trixie|forky|duke) return 0 ;;
        "$host_codename") [[ -n $s ]] ;;
        *) return 1 ;;
    esac
}

# Prints "URI SUITE" for every enabled binary ("deb") source the host's apt knows about.
_apt_rv_host_sources() {
    local f
    shopt -s nullglob
    local etc=${APT_RV_HOST_APT:-/etc/apt}
    for f in "$etc/sources.list" "$etc"/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        # One-line style: deb [opts] URI SUITE COMPONENT...
        awk '
            { sub(/#.*/, "") }
            $1 != "deb" { next }
            {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if (i + 1 <= NF) print $i, $(i + 1)
            }' "$f"
    done
    for f in "$etc"/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        # deb822 style: stanzas separated by blank lines; fields may continue on lines
        # that start with white space.
        awk '
            function flush(   n, m, i, j, u, s, t, deb) {
                deb = 0
                n = split(types, t, /[ \t]+/)
                for (i = 1; i <= n; i++) if (t[i] == "deb") deb = 1
                if (deb && tolower(enabled) != "no") {
                    n = split(uris, u, /[ \t]+/); m = split(suites, s, /[ \t]+/)
                    for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
                        if (u[i] != "" && s[j] != "") print u[i], s[j]
                }
                types = uris = suites = enabled = ""; last = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { v = $0; sub(/^[ \t]+/, "", v)
                       if (last == "uris") uris = uris " " v
                       else if (last == "suites") suites = suites " " v
                       else if (last == "types") types = types " " v
                       next }
            {
                k = tolower($0); sub(/:.*/, "", k)
                v = $0; sub(/^[^:]*:[ \t]*/, "", v); sub(/[ \t]+$/, "", v)
                last = k
                if (k == "types") types = v
                else if (k == "uris") uris = v
                else if (k == "suites") suites = v
                else if (k == "enabled") enabled = v
            }
            END { flush() }' "$f"
    done
    shopt -u nullglob
}

# Prints the URI of Debian's main archive as the host's apt sources name it (the entry for
# a Debian suite such as bookworm or bookworm-updates; never -security, never a third-party
# repository).
apt_rv_mirror_uri() {
    if [[ -n ${POPEK_DEBIAN_MIRROR:-} ]]; then printf '%s\n' "${POPEK_DEBIAN_MIRROR%/}"; return 0; fi
    local uri suite
    while read -r uri suite; do
        case $suite in *-security|*/updates) continue ;; esac
        _apt_rv_is_debian_suite "$suite" || continue
        printf '%s\n' "${uri%/}"
        return 0
    done < <(_apt_rv_host_sources)
    apt_rv_die "no Debian main archive found in /etc/apt/sources.list{,.d/}: set POPEK_DEBIAN_MIRROR"
}

# Prints the URI of Debian's security archive: the host's -security entry if it has one,
# else the main archive's URI with its last path element "debian" replaced by
# "debian-security".
apt_rv_security_uri() {
    if [[ -n ${POPEK_DEBIAN_SECURITY_MIRROR:-} ]]; then printf '%s\n' "${POPEK_DEBIAN_SECURITY_MIRROR%/}"; return 0; fi
    local uri suite main
    while read -r uri suite; do
        case $suite in *-security|*/updates) ;; *) continue ;; esac
        _apt_rv_is_debian_suite "$suite" || continue
        printf '%s\n' "${uri%/}"
        return 0
    done < <(_apt_rv_host_sources)
    main=$(apt_rv_mirror_uri) || return 1
    if [[ $main == */debian ]]; then
        printf '%s-security\n' "$main"
    else
        apt_rv_warn "no security archive in the host's sources; using the main archive's URI for it"
        printf '%s\n' "$main"
    fi
}

# apt_rv_keyring_knows KEYRING SUITE: succeeds if the keyring holds a key whose user id names
# the release (e.g. "(13/trixie)"). Fails when it doesn't, and when gpg is missing (status 2:
# unknown; apt's own check then decides).
apt_rv_keyring_knows() {
    local keyring=$1 codename=${2%%-*}
    [[ -r $keyring ]] || return 1
    command -v gpg >/dev/null 2>&1 || return 2
    local home rc=1
    home=$(mktemp -d)
    if GNUPGHOME=$home gpg --batch --no-tty --with-colons --show-keys "$keyring" 2>/dev/null |
            grep -q "^uid:.*/${codename})"; then
        rc=0
    fi
    rm -rf "$home"
    return $rc
}

# apt_rv_init DIR: a private apt directory under DIR (created if missing). Sets APT_RV_DIR.
# Only the host's proxy settings are carried over from its apt configuration.
apt_rv_init() {
    local dir=$1
    [[ -n $dir ]] || { apt_rv_die "apt_rv_init: no directory given"; return 1; }
    mkdir -p "$dir"/{state/lists/partial,cache/archives/partial,etc/apt.conf.d,etc/preferences.d}
    APT_RV_DIR=$(cd "$dir" && pwd)
    : >"$APT_RV_DIR/state/status"
    local conf=$APT_RV_DIR/etc/apt.conf d=$APT_RV_DIR
    {
        echo "// Written by apt-riscv64.sh: a private apt configuration for fetching $APT_RV_ARCH packages."
        echo "Dir::State \"$d/state\";"
        echo "Dir::State::status \"$d/state/status\";"
        echo "Dir::Cache \"$d/cache\";"
        echo "Dir::Etc::main \"/dev/null\";"
        echo "Dir::Etc::Parts \"$d/etc/apt.conf.d\";"
        echo "Dir::Etc::SourceList \"$d/etc/sources.list\";"
        echo "Dir::Etc::SourceParts \"/dev/null\";"
        echo "Dir::Etc::Preferences \"/dev/null\";"
        echo "Dir::Etc::PreferencesParts \"$d/etc/preferences.d\";"
        echo "APT::Architecture \"$APT_RV_ARCH\";"
        echo "APT::Architectures { \"$APT_RV_ARCH\"; };"
        echo "Acquire::Languages \"none\";"
        echo "Acquire::Retries \"2\";"
        # As root, apt would hand downloads to the _apt user, who may not be able to
        # write into the caller's directories; the files here are the caller's own.
        [[ $(id -u) -eq 0 ]] && echo "APT::Sandbox::User \"root\";"
        # The host's proxies, if any.
        apt-config dump 2>/dev/null | grep -iE '^Acquire::[a-z]+::proxy' || true
    } >"$conf"
}

apt_rv_get()   { APT_CONFIG=$APT_RV_DIR/etc/apt.conf apt-get "$@"; }
apt_rv_cache() { APT_CONFIG=$APT_RV_DIR/etc/apt.conf apt-cache "$@"; }

# _apt_rv_write_sources MODE SUITE...: MODE is "signed" or "trusted".
_apt_rv_write_sources() {
    local mode=$1; shift
    local main sec suite uri opts
    main=$(apt_rv_mirror_uri) || return 1
    opts="arch=$APT_RV_ARCH"
    if [[ $mode == signed ]]; then opts+=" signed-by=$APT_RV_KEYRING"; else opts+=" trusted=yes"; fi
    {
        for suite in "$@"; do
            case $suite in
                *-security) sec=${sec:-$(apt_rv_security_uri)} || return 1; uri=$sec ;;
                *) uri=$main ;;
            esac
            echo "deb [$opts] $uri $suite $APT_RV_COMPONENTS"
        done
    } >"$APT_RV_DIR/etc/sources.list"
}

_apt_rv_clear_lists() {
    find "$APT_RV_DIR/state/lists" -mindepth 1 -maxdepth 1 -type f ! -name lock -delete
    rm -rf "$APT_RV_DIR/state/lists/partial"/*
    rm -f "$APT_RV_DIR"/cache/*.bin
}

# _apt_rv_try_update MODE SUITE...: writes the sources and runs apt-get update; its output
# goes to $APT_RV_DIR/update.log. Fails if any index failed.
_apt_rv_try_update() {
    local mode=$1; shift
    _apt_rv_write_sources "$mode" "$@" || return 1
    local log=$APT_RV_DIR/update.log rc=0
    apt_rv_get -q update >"$log" 2>&1 || rc=$?
    # apt-get update can exit 0 with some indexes missing ("W: Failed to fetch").
    if (( rc != 0 )) || grep -qE '^(E:|W: (Failed to fetch|Some index files failed))' "$log"; then
        return 1
    fi
}

_apt_rv_show_errors() {
    grep -E '^(E: Failed|E: .*(NO_PUBKEY|signed|verif))|^W: .*(NO_PUBKEY|verif)' "$APT_RV_DIR/update.log" |
        sed 's/^/    /' | head -n 8 >&2 || true
}

# Last resort when the mirror's indexes don't match its signed Release file: fetch the
# Packages index of SUITE directly, with no check against anything, and let apt use it as a
# trusted=yes source without a Release file. The .deb files are then checked against this
# index's hashes only.
_apt_rv_unverified_index() {
    local suite=$1 comp idx dest tmp ok=0 target base
    _apt_rv_clear_lists
    _apt_rv_write_sources trusted "$suite" || return 1
    for comp in $APT_RV_COMPONENTS; do
        # apt's own name for the index file in the lists directory, and its URI.
        target=$(apt_rv_get indextargets --no-release-info --format '$(FILENAME) $(URI)' \
                    "Created-By: Packages" "Component: $comp" "Architecture: $APT_RV_ARCH" \
                    2>/dev/null | head -n1)
        [[ -n $target ]] || { apt_rv_die "apt knows no Packages index for $suite/$comp"; return 1; }
        dest=${target%% *}; base=${target#* }
        tmp=$APT_RV_DIR/state/lists/partial/unverified
        local got=""
        for idx in xz gz; do
            rm -f "$tmp"
            if APT_CONFIG=$APT_RV_DIR/etc/apt.conf /usr/lib/apt/apt-helper -q download-file \
                    "$base.$idx" "$tmp" >>"$APT_RV_DIR/update.log" 2>&1; then
                case $idx in
                    xz) xz -dc "$tmp" >"$dest.new" 2>/dev/null || continue ;;
                    gz) gzip -dc "$tmp" >"$dest.new" 2>/dev/null || continue ;;
                esac
                got=$idx; break
            fi
        done
        rm -f "$tmp"
        [[ -n $got ]] || { apt_rv_die "could not fetch $base.{xz,gz}"; return 1; }
        mv "$dest.new" "$dest"
        ok=1
    done
    (( ok )) && apt_rv_cache policy >/dev/null 2>&1
}

# apt_rv_update SUITE...: fetches the indexes of the suites (the first is the base suite).
# Fallbacks, each with a warning:
#   1. all suites, signatures checked with APT_RV_KEYRING (trusted=yes instead if the keyring
#      doesn't know the release or apt reports a missing key);
#   2. the base suite alone (the -updates/-security indexes of foreign architectures are
#      sometimes out of step with their Release files on mirrors: "File has unexpected size");
#   3. the base suite's Packages index fetched directly, unauthenticated (same symptom on the
#      base suite itself). POPEK_APT_STRICT=1 turns 3 and trusted=yes into errors.
# Sets APT_RV_SUITES_USED and APT_RV_TRUST.
apt_rv_update() {
    [[ -n ${APT_RV_DIR:-} ]] || { apt_rv_die "apt_rv_update: call apt_rv_init first"; return 1; }
    (( $# > 0 )) || { apt_rv_die "apt_rv_update: no suite given"; return 1; }
    local base=$1 mode=signed strict=${POPEK_APT_STRICT:-0} known=0
    apt_rv_keyring_knows "$APT_RV_KEYRING" "$base" || known=$?
    if (( known == 1 )); then
        if [[ $strict == 1 ]]; then
            apt_rv_die "$APT_RV_KEYRING has no key for $base (POPEK_APT_STRICT=1)"; return 1
        fi
        apt_rv_warn "$APT_RV_KEYRING has no key for '$base': using trusted=yes, signatures NOT checked" \
                    "(install a newer debian-archive-keyring to fix)"
        mode=trusted
    fi

    _apt_rv_clear_lists
    if _apt_rv_try_update "$mode" "$@"; then
        APT_RV_SUITES_USED=("$@"); APT_RV_TRUST=$mode; return 0
    fi
    if [[ $mode == signed ]] && grep -qE 'NO_PUBKEY|not signed|signatures couldn.t be verified' "$APT_RV_DIR/update.log"; then
        _apt_rv_show_errors
        if [[ $strict == 1 ]]; then
            apt_rv_die "signature check failed (POPEK_APT_STRICT=1)"; return 1
        fi
        apt_rv_warn "apt cannot check the signatures of $* with $APT_RV_KEYRING: using trusted=yes, signatures NOT checked"
        mode=trusted
        _apt_rv_clear_lists
        if _apt_rv_try_update "$mode" "$@"; then
            APT_RV_SUITES_USED=("$@"); APT_RV_TRUST=$mode; return 0
        fi
    fi
    if (( $# > 1 )); then
        _apt_rv_show_errors
        apt_rv_warn "index update failed for $*; falling back to '$base' alone (no updates/security fixes)"
        _apt_rv_clear_lists
        if _apt_rv_try_update "$mode" "$base"; then
            APT_RV_SUITES_USED=("$base"); APT_RV_TRUST=$mode; return 0
        fi
    fi
    _apt_rv_show_errors
    if ! grep -qE 'unexpected size|Hash Sum mismatch|Checksum' "$APT_RV_DIR/update.log"; then
        apt_rv_die "apt-get update failed for '$base' (log: $APT_RV_DIR/update.log)"; return 1
    fi
    if [[ $strict == 1 ]]; then
        apt_rv_die "the mirror's '$base' index doesn't match its Release file (POPEK_APT_STRICT=1)"; return 1
    fi
    apt_rv_warn "the mirror's '$base' $APT_RV_ARCH index doesn't match its Release file;" \
                "using the index as served, UNAUTHENTICATED (set POPEK_APT_STRICT=1 to refuse)"
    if _apt_rv_unverified_index "$base"; then
        APT_RV_SUITES_USED=("$base"); APT_RV_TRUST=unverified; return 0
    fi
    apt_rv_die "could not fetch any index for '$base'"
}

# apt_rv_field PKG FIELD: FIELD of PKG's candidate version (first line only).
apt_rv_field() {
    local pkg=$1 field=$2 ver
    ver=$(apt_rv_version "$pkg") || return 1
    apt_rv_cache show "$pkg=$ver" 2>/dev/null |
        awk -v f="$field" 'BEGIN { f = tolower(f) ":" }
                           tolower(substr($0, 1, length(f))) == f { sub(/^[^:]*:[ \t]*/, ""); print; exit }
                           /^$/ { exit }'
}

# apt_rv_version PKG: PKG's candidate version.
apt_rv_version() {
    local v
    v=$(apt_rv_cache policy "$1" 2>/dev/null | awk '/^  Candidate:/ { print $2; exit }')
    if [[ -z $v || $v == "(none)" ]]; then
        apt_rv_die "no package '$1' for $APT_RV_ARCH in ${APT_RV_SUITES_USED[*]:-the index}"; return 1
    fi
    printf '%s\n' "$v"
}

# apt_rv_resolve_meta META [REGEX]: the package META depends on whose name matches REGEX
# (default: any; the first dependency). E.g. linux-image-riscv64 -> linux-image-6.12...-riscv64.
apt_rv_resolve_meta() {
    local meta=$1 re=${2:-.} deps dep
    deps=$(apt_rv_field "$meta" Depends) || return 1
    [[ -n $deps ]] || { apt_rv_die "'$meta' has no Depends"; return 1; }
    while read -r dep; do
        dep=${dep%%[ (]*}
        [[ -n $dep ]] || continue
        if [[ $dep =~ $re ]]; then printf '%s\n' "$dep"; return 0; fi
    done < <(tr ',|' '\n\n' <<<"$deps" | sed 's/^[ \t]*//')
    apt_rv_die "no dependency of '$meta' matches /$re/ (Depends: $deps)"
}

# apt_rv_download DEST PKG[=VERSION]...: downloads the packages' candidate (or given)
# versions into DEST, checked against the index's SHA256. A file already in DEST with the
# right hash is kept. Prints the .deb paths, one a line, in the order asked.
apt_rv_download() {
    local dest=$1; shift
    mkdir -p "$dest"
    local uris line uri file size hash want=() need=() p
    uris=$(apt_rv_get -qq download --print-uris "$@") || {
        apt_rv_die "cannot resolve $* for download"; return 1; }
    while read -r line; do
        [[ -n $line ]] || continue
        read -r uri file size hash <<<"$line"
        file=${file//\'/}
        want+=("$dest/$file")
        if [[ -f $dest/$file && $hash == SHA256:* ]] &&
                [[ $(sha256sum "$dest/$file" | cut -d' ' -f1) == "${hash#SHA256:}" ]]; then
            continue
        fi
        need+=("$file")
    done <<<"$uris"
    if (( ${#need[@]} > 0 )); then
        for p in "$@"; do
            # Download only those not already there: match PKG_ prefixes.
            local name=${p%%=*} f hit=0
            for f in "${need[@]}"; do [[ $f == "${name}_"* ]] && hit=1; done
            (( hit )) || continue
            rm -f "$dest/${name}_"*.deb
            (cd "$dest" && apt_rv_get -q download "$p" >&2) || {
                apt_rv_die "download of $p failed"; return 1; }
        done
    fi
    for f in "${want[@]}"; do
        [[ -f $f ]] || { apt_rv_die "expected $f after download"; return 1; }
        printf '%s\n' "$f"
    done
}

# apt_rv_unpack DEB DIR: unpacks DEB's files into DIR (no maintainer scripts run).
apt_rv_unpack() {
    mkdir -p "$2"
    dpkg-deb -x "$1" "$2"
}
