#!/bin/sh
# podplug guest agent -- busybox sh; also the initramfs /init.
#
# As PID 1 it mounts proc, sysfs, devtmpfs and two tmpfs, loads the "boot" group of
# /etc/podplug/modules (lines "GROUP FILE NAME" in load order, with insmod: the virtio
# transport and virtio_console, what its own channel needs), finds the virtio-serial port
# whose /sys/class/virtio-ports/*/name is "podplug.agent" (there is no udev, so no
# /dev/virtio-ports/ links) and serves the protocol below on it.  The port is opened once and
# never closed: Linux drops host data that arrives while the port is closed.  The groups the
# plan's devices need (podplug.load=blk,nvme,... on the kernel command line) are loaded in
# the background once it serves; a verb that looks at devices waits for them, and loads a
# group it needs that was not named ("blk", "scsi" and "fs" on first use, "vfio" on the first
# vfio-bind).

# PROTOCOL (version 1).  One request per line, UTF-8/ASCII, fields separated by spaces:
#
#     ID VERB [ARG]...
#
#   ID    1-32 characters of [A-Za-z0-9._-], chosen by the host and echoed on every reply line.
#   VERB  one of the named verbs below; there is no "run a shell command" verb.
#   ARG   no whitespace inside an argument.
#
# Reply: zero or more data lines, then exactly one final line:
#
#     ID - TEXT               data line
#     ID OK [PAYLOAD]         success (the final line)
#     ID ERR CODE MESSAGE     failure (the final line)
#
#   On opening its port the agent announces itself unasked with the line
#
#     hello OK pong version=1 kernel=KREL uptime=SECONDS
#
#   (a ping's reply under the reserved ID "hello"), so a host that is connected learns of it
#   at once instead of at its next ping.
#
#   CODE is one of: malformed unknown-verb usage invalid not-found timeout no-iommu failed
#   internal.  A line whose ID is unusable is answered with the ID "?".  Blank lines are
#   ignored.  The agent never exits on bad input; it keeps serving.  The waiting verbs
#   (wait-pci, blk-of-pci, blk-of-scsi) answer "ERR timeout" when their TIMEOUT_MS (> 0)
#   runs out, "ERR not-found" when it is 0 or the path can never resolve.
#
# Verbs (MS = milliseconds, PATH = Kata guest PCI path such as 02/00 or 03/00/01/00: one
# hex slot per bus level, starting on root bus 0000:00, an optional .F selects a function):
#
#   ping                                    OK pong version=1 kernel=KREL uptime=SECONDS
#   help                                    "- VERB ARGS" lines; OK COUNT
#   lspci                                   "- BDF VVVV:DDDD CLASS DRIVER SYSFS_PATH" lines
#                                           (DRIVER "-" when unbound, SYSFS_PATH below
#                                           /sys/devices/); OK COUNT
#   wait-pci PATH TIMEOUT_MS                OK BDF...   (root-to-device chain; last = device)
#   blk-of-pci PATH [TIMEOUT_MS]            OK NAME...  (whole-disk block nodes below it)
#   blk-of-scsi ADDR [TIMEOUT_MS]           OK NAME...  (ADDR = H:C:T:L or Kata's TARGET:LUN)
#   wait-pcis TIMEOUT_MS PATH...            "- PATH BDF" lines; OK COUNT (each PATH waited
#                                           for in turn, one request: a slot's functions)
#   wait-blks TIMEOUT_MS PATH...            "- PATH NAME" lines; OK COUNT (the virtio-blk
#                                           disk below each PATH, waited for together: a
#                                           batch of volumes proven visible in one call)
#   mknod DIR CPATH TYPE MAJOR MINOR MODE   OK path=DIR/CPATH type=b|c devnum=MAJ:MIN mode=OCT
#                                           (DIR under /run/podplug/, CPATH absolute,
#                                           TYPE b or c, MODE octal; guest numbers)
#   devnum NAME                             OK devnum=MAJ:MIN type=b|c
#                                           (NAME: /abs/node, a /dev name, or a sysfs
#                                           block/char class device name)
#   rw NODE                                 block: OK type=b read=4096 md5=HEX write=ok
#                                           offset=N restored=ok (direct I/O; the 4 KiB
#                                           block at N is saved, overwritten with a marker,
#                                           read back and restored; write=ro on a read-only
#                                           device); char: OK type=c open=ok|error
#                                           read=N|error md5=HEX (read only, bounded to 2 s)
#   ro-check NODE                           OK type=b size=BYTES head=SHA256 tail=SHA256
#                                           (reads only: the first and the last 4 KiB,
#                                           direct I/O; the size from the kernel)
#   blk-sums NODE MIB COUNT                 OK sums=SHA256,... (each MiB of COUNT from
#                                           MiB MIB, direct I/O reads; COUNT 1..64)
#   blk-write NODE MIB COUNT                OK sums=SHA256,... of the random bytes written
#                                           there (direct I/O, fsync). DESTRUCTIVE: for
#                                           scratch volumes only
#   vfio-bind BDF                           OK group=G dev=/dev/vfio/G devnum=MAJ:MIN
#                                           driver=vfio-pci previous=DRIVER|-
#   fs-check NODE                           OK fs=ext2|ext4 write=ok readback=ok
#                                           DESTRUCTIVE: mkfs (busybox mke2fs makes ext2
#                                           when there is no mkfs.ext4), mount, write a
#                                           file, unmount, remount, read it back, unmount.
#   serial BDF|DISK                         OK serial=TEXT (an nvme controller's or a
#                                           virtio-blk disk's serial by PCI address, or a
#                                           disk's by block name: virtio-blk serial, SCSI
#                                           VPD page 0x80; the VFIO stand-in carries the
#                                           host BDF it stands for)
#   modules GROUP                           OK group=GROUP: load a module group of
#                                           /etc/podplug/modules (boot blk scsi nvme vfio
#                                           fs) now; for nvme, once every controller it
#                                           drives has finished its probe
#   bars BDF                                "- INDEX START END FLAGS" lines (hex, from
#                                           sysfs resource; every non-empty BAR and bridge
#                                           window, 13-15 = IO/mem/prefetchable windows);
#                                           OK COUNT
#   device DIR MODE MS TYPE ID VM_PATH CPATH [OPTION]...
#                                           resolve ONE kata-agent Device entry the way
#                                           Kata's agent does, from the entry alone
#                                           (TYPE, ID, VM_PATH - for empty, CPATH and
#                                           OPTIONs exactly as the runtime rendered them;
#                                           MODE is the spec's octal file mode, MS the
#                                           device wait):
#                                           blk: ID is the PCI path of the virtio-blk
#                                             device; the disk below it gets a node at
#                                             DIR/CPATH with the guest numbers:
#                                             OK type=blk node=N devnum=M:m vm_path=/dev/X
#                                           scsi: ID is TARGET:LUN on the virtio-scsi
#                                             controller: OK type=scsi node=N devnum=M:m
#                                             vm_path=/dev/sdX
#                                           vfio-pci: each OPTION is HOSTBDF=PCIPATH; each
#                                             function is waited for, bound to vfio-pci,
#                                             and all must share one guest IOMMU group G,
#                                             which must be viable; the node is
#                                             DIR/dev/vfio/G (the agent's DevUpdate):
#                                             OK type=vfio-pci node=N devnum=M:m group=G
#                                             viable=yes map=HOST>GUEST,... peek=PEEKS
#                                           vfio-pci-gk: each function is waited for and
#                                             left on its guest driver, no node:
#                                             OK type=vfio-pci-gk map=HOST>GUEST,...
#                                             peek=PEEKS
#                                           PEEKS: HOST@BAR=W0.W1.W2.W3 (or =-) per
#                                             prefetchable BAR of a function no guest
#                                             driver held, read before binding (peek_bars)

PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
AGENT_VERSION=1
PORT_NAME=podplug.agent
MODDIR=/lib/modules/podplug
CR=$(printf '\r')
NL='
'

log() { echo "podplug-agent: $*" >/dev/console 2>/dev/null || echo "podplug-agent: $*" >&2; }

# ---------------------------------------------------------------- handler helpers
# Handlers run in a subshell and print "- TEXT" data lines, then call ok or fail (which exit
# that subshell).

data() { printf '%s %s\n' - "$*"; }
ok() { printf 'OK %s\n' "$*"; exit 0; }
fail() { printf 'ERR %s\n' "$*"; exit 0; }
usage() { fail usage "$1"; }

# getf FILE: V = first line of FILE (sysfs files may lack a trailing newline)
getf() { V=; IFS= read -r V <"$1" 2>/dev/null || [ -n "$V" ]; }

# now_cs: NOW = uptime in centiseconds (no fork)
now_cs() { read -r _u _r </proc/uptime; NOW=$(( ${_u%.*} * 100 + 1${_u#*.} - 100 )); }

is_uint() { case $1 in ''|*[!0-9]*) return 1;; esac; [ ${#1} -le 9 ]; }

check_timeout() { is_uint "$1" || fail invalid "timeout '$1' is not a number of milliseconds"; }

check_bdf() {
    case $1 in
        [0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7]) ;;
        *) fail invalid "not a PCI address DDDD:BB:DD.F: $1" ;;
    esac
}

# check_abs NAME VALUE: an absolute path of safe characters without . or .. components
check_abs() {
    case $2 in
        /*) ;;
        *) fail invalid "$1 must be an absolute path" ;;
    esac
    case $2 in
        *[!A-Za-z0-9._/:+-]*) fail invalid "$1 has characters outside [A-Za-z0-9._/:+-]" ;;
        */../*|*/..|*/./*|*/.) fail invalid "$1 must not contain . or .. components" ;;
    esac
}

# check_path PATH: sets P (lower-case) after validating the Kata PCI path syntax
check_path() {
    local _old _el
    case $1 in *[A-F]*) P=$(echo "$1" | tr A-F a-f) ;; *) P=$1 ;; esac  # no fork when lower
    case $P in
        ''|/*|*/|*//*|*[!0-9a-f/.]*) fail invalid "not a guest PCI path (like 02/00): $1" ;;
    esac
    _old=$IFS; IFS=/; set -- $P; IFS=$_old
    [ $# -le 16 ] || fail invalid "PCI path too deep: $1"
    for _el; do
        case $_el in
            [0-9a-f][0-9a-f]|[0-9a-f][0-9a-f].[0-7]) ;;
            *) fail invalid "bad PCI path element '$_el' (want a hex slot like 02 or 02.1)" ;;
        esac
        [ $((0x${_el%.*})) -le 31 ] || fail invalid "PCI slot out of range (00-1f): $_el"
    done
}

# resolve_path P: on success R = BDF chain, D = sysfs dir of the device; otherwise returns 1
# with W = what is missing and E = "absent" (may still appear) or "notbridge" (never will)
resolve_path() {
    local _bus _old _n _i _el _fn _bdf _sec _s
    _bus=0000:00; R=; D=; E=absent
    _old=$IFS; IFS=/; set -- $1; IFS=$_old
    _n=$#; _i=0
    for _el; do
        _i=$((_i + 1))
        _fn=0
        case $_el in *.*) _fn=${_el#*.} ;; esac
        _bdf=$_bus:${_el%.*}.$_fn
        if [ ! -d "/sys/bus/pci/devices/$_bdf" ]; then W="$_bdf not present"; return 1; fi
        R="$R $_bdf"
        if [ $_i -lt $_n ]; then
            _sec=
            for _s in "/sys/bus/pci/devices/$_bdf/pci_bus/"*; do
                [ -e "$_s" ] && _sec=${_s##*/}
            done
            if [ -z "$_sec" ]; then W="$_bdf is not a bridge"; E=notbridge; return 1; fi
            _bus=$_sec
        fi
    done
    R=${R# }
    D=/sys/bus/pci/devices/$_bdf
}

# wait_path P MS: resolve with polling (one PCI rescan, as the Kata agent does)
wait_path() {
    local _deadline _rescanned
    now_cs; _deadline=$((NOW + ($2 + 9) / 10)); _rescanned=
    while :; do
        resolve_path "$1" && return 0
        [ "$E" = notbridge ] && fail not-found "$1: $W"
        if [ -z "$_rescanned" ]; then
            echo 1 >/sys/bus/pci/rescan 2>/dev/null
            _rescanned=1
            continue
        fi
        now_cs
        [ "$NOW" -ge "$_deadline" ] && fail timeout "$1: $W after $2 ms"
        sleep 0.02
    done
}

# load_group GROUP: insmod the group's modules (/etc/podplug/modules lines "GROUP FILE NAME",
# in load order) that are not loaded yet; returns 1 if one failed
load_group() {
    local grp file name failed=
    while read -r grp file name; do
        [ "$grp" = "$1" ] || continue
        [ -d "/sys/module/$name" ] && continue
        # a failure is real unless the module is there now (the background preload won)
        insmod "$MODDIR/$file" 2>/dev/null || [ -d "/sys/module/$name" ] || failed="$failed $file"
    done </etc/podplug/modules
    [ -z "$failed" ]
}

# preload: load the groups named by podplug.load=G1,G2 on the kernel command line (the ones
# the plan's devices need; without the word: blk, scsi and nvme), in the background while
# the agent already serves; the marker says when it is done. Only "boot" (the channel) is
# loaded before the agent answers.
PRELOADED=/run/podplug.preloaded
preload() {
    local _w _g _c _load="blk scsi nvme"
    read -r _c </proc/cmdline
    for _w in $_c; do
        case $_w in podplug.load=*) _w=${_w#podplug.load=}; _load=$(echo "$_w" | tr , ' ') ;; esac
    done
    for _g in $_load; do
        grep -q "^$_g " /etc/podplug/modules || { log "no module group $_g"; continue; }
        load_group "$_g" || log "cannot load module group $_g"
    done
    nvme_settle
    read -r _u _r </proc/uptime
    log "preloaded module groups at uptime $_u s"
    : >"$PRELOADED"
}

# nvme_settle [BDF]: once nvme is loaded, wait (5 s at most) until the nvme controller BDF
# (every nvme-class function without one) is bound and, when bound to nvme, has finished its
# asynchronous probe (state "live"). nvme probes asynchronously, so a function may still be
# unbound right after insmod; and removing or unbinding a controller whose probe still runs
# oopses Linux 6.1 in nvme_dbbuf_dma_free (measured here: a guest panic when a stand-in was
# unplugged as soon as it appeared).
nvme_settle() {
    local _deadline _d _st _busy
    [ -d /sys/bus/pci/drivers/nvme ] || return 0
    now_cs; _deadline=$((NOW + 500))
    while :; do
        _busy=
        for _d in /sys/bus/pci/devices/${1:-*}; do
            [ -e "$_d/class" ] || continue
            getf "$_d/class"
            [ "$V" = 0x010802 ] || continue
            if [ ! -e "$_d/driver" ]; then _busy=1; continue; fi
            for _st in "$_d"/nvme/nvme*/state; do
                [ -e "$_st" ] || continue
                getf "$_st"
                case $V in live|dead|deleting*) ;; *) _busy=1 ;; esac
            done
        done
        [ -z "$_busy" ] && return 0
        now_cs
        [ "$NOW" -ge "$_deadline" ] && return 1
        sleep 0.02
    done
}

# drivers GROUP...: wait (10 s at most) for the preload, then load the groups not loaded
# yet, so a verb sees the devices with their guest drivers bound
drivers() {
    local _deadline _g
    if [ ! -e "$PRELOADED" ]; then
        now_cs; _deadline=$((NOW + 1000))
        while [ ! -e "$PRELOADED" ]; do
            now_cs
            [ "$NOW" -ge "$_deadline" ] && break
            sleep 0.02
        done
    fi
    for _g; do load_group "$_g" || fail failed "cannot load the $_g modules"; done
}

# stat_node NODE: T = b|c, MAJ, MIN, MODE (octal permission bits)
stat_node() {
    local _st
    if [ -b "$1" ]; then T=b; elif [ -c "$1" ]; then T=c; else return 1; fi
    _st=$(stat -c '%t %T %a' "$1") || return 1
    set -- $_st
    MAJ=$((0x$1)); MIN=$((0x$2)); MODE=$3
}

# check_dir DIR: the container dev directory, below /run/podplug/
check_dir() {
    check_abs DIR "$1"
    case $1 in /run/podplug/?*) ;; *) fail invalid "DIR must be below /run/podplug/" ;; esac
}

# check_mode MODE: octal permission bits
check_mode() {
    case $1 in [0-7][0-7][0-7]|[0-7][0-7][0-7][0-7]) ;; *) fail invalid "MODE must be octal" ;; esac
}

# place_node DIR CPATH TYPE MAJOR MINOR MODE: N = DIR/CPATH, a fresh node with those numbers
place_node() {
    N=${1%/}$2
    [ -d "${N%/*}" ] || mkdir -p "${N%/*}" || fail failed "cannot create ${N%/*}"
    if [ -e "$N" ] || [ -L "$N" ]; then rm -f "$N"; fi
    mknod -m "$6" "$N" "$3" "$4" "$5" || fail failed "mknod $N failed"
    stat_node "$N" || fail failed "$N is not a device node after mknod"
}

# find_blk_pci P MS: B = the whole-disk block names below the device at PCI path P
find_blk_pci() {
    local _deadline
    now_cs; _deadline=$((NOW + ($2 + 9) / 10))
    wait_path "$1" "$2"
    while :; do
        disks_below "$D"
        [ -n "$B" ] && return 0
        now_cs
        if [ "$NOW" -ge "$_deadline" ]; then
            [ "$2" -gt 0 ] && fail timeout "no block device below ${R##* } ($1) after $2 ms"
            fail not-found "no block device below ${R##* } ($1)"
        fi
        sleep 0.02
    done
}

# find_blk_scsi ADDR MS: B = the disk names at SCSI address H:C:T:L or Kata's TARGET:LUN
find_blk_scsi() {
    local _old _x _pat _scan _hosts _deadline _scanned _b _h _ms=$2
    _old=$IFS; IFS=:; set -- $1; IFS=$_old
    for _x; do is_uint "$_x" || fail invalid "SCSI address parts must be numbers"; done
    case $# in
        2) _pat="*:0:$1:$2"; _scan="0 $1 $2"; _hosts="/sys/class/scsi_host/host*" ;;
        4) _pat="$1:$2:$3:$4"; _scan="$2 $3 $4"; _hosts="/sys/class/scsi_host/host$1" ;;
        *) fail invalid "SCSI address must be H:C:T:L or TARGET:LUN" ;;
    esac
    now_cs; _deadline=$((NOW + (_ms + 9) / 10)); _scanned=
    while :; do
        B=
        for _b in /sys/bus/scsi/devices/$_pat/block/*; do
            [ -e "$_b" ] && B="$B ${_b##*/}"
        done
        B=${B# }
        [ -n "$B" ] && return 0
        if [ -z "$_scanned" ]; then
            for _h in $_hosts; do [ -e "$_h/scan" ] && echo "$_scan" >"$_h/scan" 2>/dev/null; done
            _scanned=1
            continue
        fi
        now_cs
        if [ "$NOW" -ge "$_deadline" ]; then
            [ "$_ms" -gt 0 ] && fail timeout "no SCSI disk at $_pat after $_ms ms"
            fail not-found "no SCSI disk at $_pat"
        fi
        sleep 0.02
    done
}

# bind_vfio BDF: bind the function to vfio-pci (driver_override, unbind, drivers_probe, as
# Kata's agent does); G = its guest IOMMU group, PREV = the driver it had
bind_vfio() {
    local _d=/sys/bus/pci/devices/$1 _l _drv
    [ -d "$_d" ] || fail not-found "no PCI device $1"
    [ -e "$_d/iommu_group" ] || fail no-iommu "$1 has no IOMMU group (boot with a vIOMMU and intel_iommu=on)"
    G=$(readlink "$_d/iommu_group"); G=${G##*/}
    load_group vfio || fail failed "cannot load the vfio modules"
    [ -d /sys/bus/pci/drivers/vfio-pci ] || fail failed "vfio-pci driver not loaded"
    PREV=-
    if [ -e "$_d/driver" ]; then _l=$(readlink "$_d/driver"); PREV=${_l##*/}; fi
    [ "$PREV" = nvme ] && nvme_settle "$1"
    echo vfio-pci >"$_d/driver_override" || fail failed "cannot set driver_override of $1"
    if [ "$PREV" != - ] && [ "$PREV" != vfio-pci ]; then
        echo "$1" >"$_d/driver/unbind" || fail failed "cannot unbind $1 from $PREV"
    fi
    [ -e "$_d/driver" ] || echo "$1" >/sys/bus/pci/drivers_probe 2>/dev/null
    _drv=-
    if [ -e "$_d/driver" ]; then _l=$(readlink "$_d/driver"); _drv=${_l##*/}; fi
    [ "$_drv" = vfio-pci ] || fail failed "$1 is bound to $_drv, not vfio-pci"
}

# peek_bars BDF HOST: PK += " HOST@BAR=W0.W1.W2.W3" for each prefetchable memory BAR of a
# function no guest driver holds: the first 16 bytes as four 32-bit reads through /dev/mem
# (busybox devmem), memory decoding switched on for the reads by the PCI core's own "enable"
# attribute and off again. Prefetchable only: PCI allows no read side effects there (PCI
# Local Bus 3.0, 6.2.5.1), so the read cannot disturb the device. A held function, a
# BAR the kernel did not place, or a refused read adds HOST@BAR=- (the proof says why).
peek_bars() {
    local _d=/sys/bus/pci/devices/$1 _i=0 _start _end _flags _w _a _k _on
    [ -e "$_d/driver" ] && return 0
    _on=no
    while read -r _start _end _flags; do
        if [ $(( _flags & 0x2200 )) = $(( 0x2200 )) ] && [ "$_start" != 0x0000000000000000 ]; then
            if [ $_on = no ]; then echo 1 >"$_d/enable" 2>/dev/null && _on=yes || _on=failed; fi
            _w=; _k=0
            while [ $_on = yes ] && [ $_k -lt 16 ]; do
                _a=$(devmem $(( _start + _k )) 32 2>/dev/null) || { _w=; break; }
                _w="$_w.${_a#0x}"; _k=$((_k + 4))
            done
            PK="$PK $2@$_i=${_w#.}"; [ -n "$_w" ] || PK="$PK-"
        fi
        _i=$((_i + 1))
    done <"$_d/resource"
    [ $_on = yes ] && echo 0 >"$_d/enable" 2>/dev/null
    return 0
}

# check_viable G: every function in guest IOMMU group G is bound to vfio-pci, or to no
# driver, or is a bridge on pcieport: the kernel's rule for a group a container may use
# (drivers/vfio/group.c, vfio_group_viable); else fail naming the function that is not
check_viable() {
    local _m _l _drv
    for _m in /sys/kernel/iommu_groups/$1/devices/*; do
        _drv=-
        if [ -e "$_m/driver" ]; then _l=$(readlink "$_m/driver"); _drv=${_l##*/}; fi
        case $_drv in
            vfio-pci|-|pcieport|pci-stub) ;;
            *) fail not-viable "guest IOMMU group $1 is not viable: ${_m##*/} is bound to $_drv" ;;
        esac
    done
}

# wait_vfio_node G: MAJ/MIN of /dev/vfio/G once the group's node exists (3 s)
wait_vfio_node() {
    local _deadline
    now_cs; _deadline=$((NOW + 300))
    until stat_node "/dev/vfio/$1"; do
        now_cs
        [ "$NOW" -ge "$_deadline" ] && fail failed "/dev/vfio/$1 did not appear within 3 s"
        sleep 0.02
    done
}

# ---------------------------------------------------------------- verbs

v_ping() {
    [ $# -eq 0 ] || usage "ping takes no arguments"
    read -r _u _r </proc/uptime
    ok "pong version=$AGENT_VERSION kernel=$KREL uptime=$_u"
}

v_help() {
    data "ping"
    data "help"
    data "lspci"
    data "wait-pci PATH TIMEOUT_MS"
    data "blk-of-pci PATH [TIMEOUT_MS]"
    data "blk-of-scsi H:C:T:L|TARGET:LUN [TIMEOUT_MS]"
    data "wait-blks TIMEOUT_MS PATH..."
    data "wait-pcis TIMEOUT_MS PATH..."
    data "mknod DIR CONTAINER_PATH b|c MAJOR MINOR MODE"
    data "devnum NAME"
    data "rw NODE"
    data "vfio-bind BDF"
    data "fs-check NODE"
    data "serial BDF|DISK"
    data "blk-sums NODE MIB COUNT"
    data "blk-write NODE MIB COUNT"
    data "ro-check NODE"
    data "modules GROUP"
    data "bars BDF"
    data "device DIR MODE MS TYPE ID VM_PATH CONTAINER_PATH [OPTION]..."
    ok 18
}

v_lspci() {
    [ $# -eq 0 ] || usage "lspci takes no arguments"
    drivers
    _n=0
    for _d in /sys/bus/pci/devices/*; do
        [ -e "$_d" ] || continue
        getf "$_d/vendor"; _ven=${V#0x}
        getf "$_d/device"; _dev=${V#0x}
        getf "$_d/class"; _cls=${V#0x}
        _drv=-
        if [ -e "$_d/driver" ]; then _l=$(readlink "$_d/driver"); _drv=${_l##*/}; fi
        _p=$(readlink -f "$_d"); _p=${_p#/sys/devices/}
        data "${_d##*/} $_ven:$_dev $_cls $_drv $_p"
        _n=$((_n + 1))
    done
    ok "$_n"
}

v_wait_pci() {
    [ $# -eq 2 ] || usage "wait-pci PATH TIMEOUT_MS"
    check_path "$1"; check_timeout "$2"
    wait_path "$P" "$2"
    ok "$R"
}

# wait-pcis MS PATH...: every PATH waited for in one request (the functions of a slot, a
# batch); "- PATH BDF" for each, the device's own BDF
v_wait_pcis() {
    local _ms _p
    [ $# -ge 2 ] || usage "wait-pcis TIMEOUT_MS PATH..."
    _ms=$1; shift; check_timeout "$_ms"
    for _p; do check_path "$_p"; done
    for _p; do
        check_path "$_p"
        wait_path "$P" "$_ms"
        data "$P ${R##* }"
    done
    ok "$#"
}

# disks_below SYSFS_DIR: B = whole-disk block names whose sysfs path is below the directory
# disks_direct SYSFS_DIR: B = the disks virtio-blk or nvme put below the device, found
# without a fork
disks_direct() {
    local _b
    B=
    for _b in "$1"/virtio*/block/* "$1"/nvme/nvme*/nvme*n*; do
        [ -e "$_b/dev" ] && B="$B ${_b##*/}"
    done
    B=${B# }
}

disks_below() {
    local _real _b _r
    disks_direct "$1"
    [ -n "$B" ] && return 0
    _real=$(readlink -f "$1")
    for _b in /sys/class/block/*; do
        [ -e "$_b" ] || continue
        [ -e "$_b/partition" ] && continue
        _r=$(readlink -f "$_b")
        case $_r in "$_real"/*) B="$B ${_b##*/}" ;; esac
    done
    B=${B# }
}

v_blk_of_pci() {
    [ $# -eq 1 ] || [ $# -eq 2 ] || usage "blk-of-pci PATH [TIMEOUT_MS]"
    check_path "$1"; _ms=${2:-0}; check_timeout "$_ms"
    drivers blk
    find_blk_pci "$P" "$_ms"
    ok "$B"
}

# wait-blks MS PATH...: the disk below each PATH, all waited for at once (one
# pass over the pending paths every 20 ms, each disk found by its own sysfs directory)
v_wait_blks() {
    local _ms _todo _left _p _n _deadline _rescanned
    [ $# -ge 2 ] || usage "wait-blks TIMEOUT_MS PATH..."
    _ms=$1; shift; check_timeout "$_ms"
    _todo=
    for _p; do check_path "$_p"; _todo="$_todo $P"; done
    _n=$#
    drivers blk
    now_cs; _deadline=$((NOW + (_ms + 9) / 10)); _rescanned=
    while :; do
        _left=
        for _p in $_todo; do
            if resolve_path "$_p"; then
                disks_direct "$D"
                if [ -n "$B" ]; then data "$_p $B"; continue; fi
            elif [ "$E" = notbridge ]; then
                fail not-found "$_p: $W"
            fi
            _left="$_left $_p"
        done
        _todo=$_left
        [ -z "$_todo" ] && ok "$_n"
        if [ -z "$_rescanned" ]; then
            echo 1 >/sys/bus/pci/rescan 2>/dev/null
            _rescanned=1
            continue
        fi
        now_cs
        [ "$NOW" -ge "$_deadline" ] && fail timeout "no virtio-blk disk below$_todo after $_ms ms"
        sleep 0.02
    done
}

v_blk_of_scsi() {
    [ $# -eq 1 ] || [ $# -eq 2 ] || usage "blk-of-scsi H:C:T:L|TARGET:LUN [TIMEOUT_MS]"
    _ms=${2:-0}; check_timeout "$_ms"
    drivers scsi
    find_blk_scsi "$1" "$_ms"
    ok "$B"
}

v_mknod() {
    [ $# -eq 6 ] || usage "mknod DIR CONTAINER_PATH b|c MAJOR MINOR MODE"
    check_dir "$1"; check_abs CONTAINER_PATH "$2"
    case $3 in b|c) ;; *) fail invalid "TYPE must be b or c" ;; esac
    is_uint "$4" && [ "$4" -lt 4096 ] || fail invalid "MAJOR must be 0..4095"
    is_uint "$5" && [ "$5" -lt 1048576 ] || fail invalid "MINOR must be 0..1048575"
    check_mode "$6"
    place_node "$1" "$2" "$3" "$4" "$5" "$6"
    ok "path=$N type=$T devnum=$MAJ:$MIN mode=$MODE"
}

v_devnum() {
    [ $# -eq 1 ] || usage "devnum NAME"
    case $1 in
        /*) check_abs NAME "$1"
            stat_node "$1" || fail not-found "$1 is not a device node"
            ok "devnum=$MAJ:$MIN type=$T" ;;
        *[!A-Za-z0-9._:/+-]*|*..*) fail invalid "bad device name: $1" ;;
    esac
    if [ -e "/sys/class/block/$1/dev" ]; then getf "/sys/class/block/$1/dev"; ok "devnum=$V type=b"; fi
    if stat_node "/dev/$1"; then ok "devnum=$MAJ:$MIN type=$T"; fi
    for _c in /sys/class/*/"$1"/dev; do
        [ -e "$_c" ] && { getf "$_c"; ok "devnum=$V type=c"; }
    done
    fail not-found "no device called $1"
}

v_rw() {
    [ $# -eq 1 ] || usage "rw NODE"
    check_abs NODE "$1"
    _t=$(mktemp -d /tmp/rw.XXXXXX) || fail failed "mktemp"
    trap 'rm -rf "$_t"' EXIT
    if [ -c "$1" ]; then
        _open=error
        if (exec 4<"$1") 2>/dev/null; then _open=ok; fi
        if timeout 2 dd if="$1" of="$_t/head" bs=4096 count=1 2>/dev/null; then
            _n=$(wc -c <"$_t/head"); _sum=$(md5sum <"$_t/head")
            ok "type=c open=$_open read=$_n md5=${_sum%% *}"
        fi
        ok "type=c open=$_open read=error"
    fi
    [ -b "$1" ] || fail not-found "$1 is not a block or character device node"
    dd if="$1" of="$_t/head" bs=4096 count=1 iflag=direct 2>/dev/null || fail failed "cannot read $1"
    _n=$(wc -c <"$_t/head"); _sum=$(md5sum <"$_t/head"); _sum=${_sum%% *}
    [ "$(blockdev --getro "$1")" = 0 ] || ok "type=b read=$_n md5=$_sum write=ro"
    _size=$(blockdev --getsize64 "$1") || fail failed "cannot size $1"
    _blk=$((_size / 2 / 4096))
    [ "$_blk" -gt 0 ] || fail failed "$1 is too small ($_size bytes)"
    dd if="$1" of="$_t/orig" bs=4096 count=1 skip="$_blk" iflag=direct 2>/dev/null \
        || fail failed "cannot read $1 at block $_blk"
    now_cs
    echo "podplug-rw-marker $$ $NOW" | dd of="$_t/mark" bs=4096 count=1 conv=sync 2>/dev/null
    dd if="$_t/mark" of="$1" bs=4096 count=1 seek="$_blk" oflag=direct conv=notrunc,fsync \
        2>/dev/null || fail failed "cannot write $1 at block $_blk"
    dd if="$1" of="$_t/back" bs=4096 count=1 skip="$_blk" iflag=direct 2>/dev/null \
        || fail failed "cannot read back $1 at block $_blk"
    cmp -s "$_t/mark" "$_t/back"; _match=$?
    dd if="$_t/orig" of="$1" bs=4096 count=1 seek="$_blk" oflag=direct conv=notrunc,fsync \
        2>/dev/null || fail failed "cannot restore $1 at block $_blk"
    [ "$_match" = 0 ] || fail failed "marker read back from $1 at block $_blk differs"
    ok "type=b read=$_n md5=$_sum write=ok offset=$((_blk * 4096)) restored=ok"
}

v_ro_check() {
    [ $# -eq 1 ] || usage "ro-check NODE"
    check_abs NODE "$1"
    [ -b "$1" ] || fail not-found "$1 is not a block device node"
    _size=$(blockdev --getsize64 "$1") || fail failed "cannot size $1"
    [ "$_size" -ge 4096 ] && [ $((_size % 512)) -eq 0 ] || fail failed "$1: size $_size is not whole 512-byte sectors of 4 KiB or more"
    _head=$(dd if="$1" bs=512 count=8 iflag=direct 2>/dev/null | sha256sum) || fail failed "cannot read $1"
    _tail=$(dd if="$1" bs=512 count=8 skip=$((_size / 512 - 8)) iflag=direct 2>/dev/null | sha256sum) \
        || fail failed "cannot read the end of $1"
    ok "type=b size=$_size head=${_head%% *} tail=${_tail%% *}"
}

# blk-sums NODE MIB COUNT / blk-write NODE MIB COUNT: the SHA-256 of each MiB of COUNT MiB
# from MiB offset MIB, read with O_DIRECT (the device, not the guest's page cache); write
# first fills them with fresh random bytes (O_DIRECT, then fsync: on the host's side of
# QEMU when the reply comes). The host compares the sums with its own of the same bytes.
blk_range() {
    check_abs NODE "$1"
    [ -b "$1" ] || fail not-found "$1 is not a block device node"
    is_uint "$2" && is_uint "$3" && [ "$3" -ge 1 ] && [ "$3" -le 64 ] \
        || fail invalid "MIB and COUNT must be whole numbers, COUNT 1..64"
    _size=$(blockdev --getsize64 "$1") || fail failed "cannot size $1"
    [ $((($2 + $3) * 1048576)) -le "$_size" ] || fail invalid "MiB $2+$3 is beyond $1 ($_size bytes)"
}

blk_sums() {  # NODE MIB COUNT [FLAG]: FLAG "iflag=direct" for a device (tmpfs has none)
    _sums=
    _i=0
    while [ "$_i" -lt "$3" ]; do
        _h=$(dd if="$1" bs=1048576 count=1 skip=$(($2 + _i)) ${4:-} 2>/dev/null | sha256sum) \
            || fail failed "cannot read MiB $(($2 + _i)) of $1"
        _sums=$_sums${_sums:+,}${_h%% *}
        _i=$((_i + 1))
    done
    ok "sums=$_sums"
}

v_blk_sums() {
    [ $# -eq 3 ] || usage "blk-sums NODE MIB COUNT"
    blk_range "$@"
    blk_sums "$@" iflag=direct
}

v_blk_write() {
    [ $# -eq 3 ] || usage "blk-write NODE MIB COUNT"
    blk_range "$@"
    [ "$(blockdev --getro "$1")" = 0 ] || fail failed "$1 is read-only"
    _t=$(mktemp /tmp/blk.XXXXXX) || fail failed "mktemp"
    trap 'rm -f "$_t"' EXIT
    dd if=/dev/urandom of="$_t" bs=1048576 count="$3" 2>/dev/null || fail failed "no random bytes"
    dd if="$_t" of="$1" bs=1048576 seek="$2" oflag=direct conv=notrunc,fsync 2>/dev/null \
        || fail failed "cannot write $1 at MiB $2"
    blk_sums "$_t" 0 "$3"
}

v_serial() {
    [ $# -eq 1 ] || usage "serial BDF|DISK"
    drivers
    case $1 in
        *:*) check_bdf "$1"
            _d=/sys/bus/pci/devices/$1
            [ -e "$_d" ] || fail not-found "no PCI device $1"
            getf "$_d/class"
            [ "$V" = 0x010802 ] && drivers nvme  # an nvme controller: its driver, on demand
            nvme_settle "$1"
            for _s in "$_d"/nvme/nvme*/serial "$_d"/virtio*/block/*/serial; do
                if [ -e "$_s" ]; then getf "$_s"; set -- $V; ok "serial=$*"; fi
            done
            fail not-found "$1 has no serial (an nvme or virtio-blk device with its driver bound)" ;;
        *[!a-z0-9]*|'') fail invalid "not a PCI address or a disk name: $1" ;;
    esac
    _b=/sys/class/block/$1
    [ -e "$_b" ] || fail not-found "no disk $1"
    if [ -e "$_b/serial" ]; then getf "$_b/serial"; set -- $V; ok "serial=$*"; fi
    if [ -e "$_b/device/vpd_pg80" ]; then
        # VPD page 0x80: a 4-byte header (type, page, length), then the serial
        V=$(dd if="$_b/device/vpd_pg80" bs=1 skip=4 2>/dev/null | tr -d '\000')
        set -- $V; ok "serial=$*"
    fi
    fail not-found "disk $1 has no serial"
}

v_modules() {
    [ $# -eq 1 ] || usage "modules GROUP"
    case $1 in *[!a-z0-9]*|'') fail invalid "bad module group: $1" ;; esac
    grep -q "^$1 " /etc/podplug/modules || fail not-found "no module group $1"
    load_group "$1" || fail failed "cannot load the $1 modules"
    [ "$1" = nvme ] && nvme_settle
    ok "group=$1"
}

v_bars() {
    [ $# -eq 1 ] || usage "bars BDF"
    check_bdf "$1"
    _r=/sys/bus/pci/devices/$1/resource
    [ -e "$_r" ] || fail not-found "no PCI device $1"
    _i=0; _n=0
    while read -r _start _end _flags; do
        if [ "$_end" != 0x0000000000000000 ] || [ "$_start" != 0x0000000000000000 ]; then
            data "$_i ${_start#0x} ${_end#0x} ${_flags#0x}"
            _n=$((_n + 1))
        fi
        _i=$((_i + 1))
    done <"$_r"
    ok "$_n"
}

# device DIR MODE MS TYPE ID VM_PATH CPATH [OPTION]...: one kata-agent Device entry
v_device() {
    [ $# -ge 7 ] || usage "device DIR MODE MS TYPE ID VM_PATH CONTAINER_PATH [OPTION]..."
    _dir=$1; _mode=$2; _ms=$3; _type=$4; _id=$5; _vm=$6; _cpath=$7; shift 7
    check_dir "$_dir"; check_mode "$_mode"; check_timeout "$_ms"
    check_abs CONTAINER_PATH "$_cpath"
    [ "$_vm" = - ] || check_abs VM_PATH "$_vm"
    case $_type in
        blk|scsi)
            [ $# -eq 0 ] || fail invalid "a $_type entry takes no options"
            if [ "$_type" = blk ]; then check_path "$_id"; drivers blk; find_blk_pci "$P" "$_ms"
            else drivers scsi; find_blk_scsi "$_id" "$_ms"; fi
            set -- $B
            [ $# -eq 1 ] || fail failed "$_id: $# disks ($B), expected one"
            _name=$1
            getf "/sys/class/block/$_name/dev"  # the kernel's numbers, read without a fork
            MAJ=${V%%:*}; MIN=${V#*:}
            is_uint "$MAJ" && is_uint "$MIN" || fail failed "no device numbers for $_name"
            place_node "$_dir" "$_cpath" b "$MAJ" "$MIN" "$_mode"
            ok "type=$_type node=$N devnum=$MAJ:$MIN vm_path=/dev/$_name" ;;
        vfio-pci|vfio-pci-gk)
            [ $# -ge 1 ] || fail invalid "a $_type entry needs HOSTBDF=PCIPATH options"
            drivers
            _map=; _grp=; PK=
            for _o; do
                _host=${_o%%=*}; _path=${_o#*=}
                [ "$_host" != "$_o" ] || fail invalid "malformed VFIO option $_o (HOSTBDF=PCIPATH)"
                check_bdf "$_host"; check_path "$_path"
                wait_path "$P" "$_ms"
                _guest=${R##* }
                peek_bars "$_guest" "$_host"
                if [ "$_type" = vfio-pci ]; then
                    bind_vfio "$_guest"
                    [ -z "$_grp" ] || [ "$_grp" = "$G" ] \
                        || fail failed "$_guest is not in guest IOMMU group $_grp"
                    _grp=$G
                fi
                _map="$_map,$_host>$_guest"
            done
            _pk=; for _w in $PK; do _pk="$_pk,$_w"; done
            [ "$_type" = vfio-pci-gk ] && ok "type=vfio-pci-gk map=${_map#,} peek=${_pk#,}"
            check_viable "$_grp"
            wait_vfio_node "$_grp"
            place_node "$_dir" "/dev/vfio/$_grp" c "$MAJ" "$MIN" "$_mode"
            ok "type=vfio-pci node=$N devnum=$MAJ:$MIN group=$_grp viable=yes map=${_map#,} peek=${_pk#,}" ;;
        *) fail invalid "unknown device type '$_type' (blk scsi vfio-pci vfio-pci-gk)" ;;
    esac
}

v_vfio_bind() {
    [ $# -eq 1 ] || usage "vfio-bind BDF"
    check_bdf "$1"
    bind_vfio "$1"
    wait_vfio_node "$G"
    ok "group=$G dev=/dev/vfio/$G devnum=$MAJ:$MIN driver=vfio-pci previous=$PREV"
}

v_fs_check() {
    [ $# -eq 1 ] || usage "fs-check NODE"
    check_abs NODE "$1"
    [ -b "$1" ] || fail not-found "$1 is not a block device node"
    load_group fs || fail failed "cannot load the filesystem modules"
    if command -v mkfs.ext4 >/dev/null 2>&1; then
        _fs=ext4; mkfs.ext4 -F -q "$1" >/dev/null 2>&1 || fail failed "mkfs.ext4 $1 failed"
    else
        _fs=ext2; mke2fs -F "$1" >/dev/null 2>&1 || fail failed "mke2fs $1 failed"
    fi
    _m=$(mktemp -d /tmp/fscheck.XXXXXX) || fail failed "mktemp"
    trap 'umount "$_m" 2>/dev/null; rmdir "$_m" 2>/dev/null' EXIT
    mount -t "$_fs" "$1" "$_m" || fail failed "mount -t $_fs $1 failed"
    now_cs; _word="podplug-fs-check-$$-$NOW"
    echo "$_word" >"$_m/podplug-check" && sync || fail failed "cannot write a file on $1"
    umount "$_m" || fail failed "umount $1 failed"
    blockdev --flushbufs "$1" 2>/dev/null
    mount -t "$_fs" "$1" "$_m" || fail failed "remount of $1 failed"
    getf "$_m/podplug-check"
    [ "$V" = "$_word" ] || fail failed "file read back from $1 differs"
    umount "$_m" || fail failed "final umount of $1 failed"
    ok "fs=$_fs write=ok readback=ok"
}

# ---------------------------------------------------------------- dispatcher

send() { printf '%s\n' "$1" >&3; }

handle_line() {
    _line=${1%"$CR"}
    set -f
    set -- $_line
    [ $# -eq 0 ] && return 0
    _id=$1; shift
    case $_id in
        *[!A-Za-z0-9._-]*) send "? ERR malformed request ID must be 1-32 of [A-Za-z0-9._-]"; return 0 ;;
    esac
    if [ ${#_id} -gt 32 ]; then send "? ERR malformed request ID longer than 32"; return 0; fi
    if [ $# -eq 0 ]; then send "$_id ERR malformed missing verb"; return 0; fi
    _verb=$1; shift
    case $_verb in
        ping) _fn=v_ping ;;
        help) _fn=v_help ;;
        lspci) _fn=v_lspci ;;
        wait-pci) _fn=v_wait_pci ;;
        blk-of-pci) _fn=v_blk_of_pci ;;
        blk-of-scsi) _fn=v_blk_of_scsi ;;
        wait-blks) _fn=v_wait_blks ;;
        wait-pcis) _fn=v_wait_pcis ;;
        mknod) _fn=v_mknod ;;
        devnum) _fn=v_devnum ;;
        rw) _fn=v_rw ;;
        vfio-bind) _fn=v_vfio_bind ;;
        serial) _fn=v_serial ;;
        fs-check) _fn=v_fs_check ;;
        bars) _fn=v_bars ;;
        ro-check) _fn=v_ro_check ;;
        blk-sums) _fn=v_blk_sums ;;
        blk-write) _fn=v_blk_write ;;
        modules) _fn=v_modules ;;
        device) _fn=v_device ;;
        *)
            case $_verb in
                *[!A-Za-z0-9._-]*) send "$_id ERR unknown-verb (unprintable verb)" ;;
                *) send "$_id ERR unknown-verb $(printf '%.32s' "$_verb") (try help)" ;;
            esac
            return 0 ;;
    esac
    _out=$(set +f; "$_fn" "$@" 2>/tmp/agent.stderr)
    _rc=$?
    # split the captured lines without forking (globbing is off in this shell)
    _final=
    _old=$IFS; IFS=$NL
    for _l in $_out; do
        case $_l in
            "- "*) send "$_id $_l" ;;
            OK|"OK "*|"ERR "*) _final="$_id $_l" ;;
            *) send "$_id - $_l" ;;
        esac
    done
    IFS=$_old
    if [ -z "$_final" ]; then
        _e=; IFS= read -r _e </tmp/agent.stderr
        _final="$_id ERR internal $_verb ended without a reply (status $_rc) $_e"
    fi
    send "$_final"
}

serve() {
    exec 3<>"$1" || return 1
    log "serving on $1"
    read -r _u _r </proc/uptime
    send "hello OK pong version=$AGENT_VERSION kernel=$KREL uptime=$_u"
    [ -e "$PRELOADED" ] || [ -n "$PRELOADING" ] || { PRELOADING=1; preload & }
    _pending=
    while :; do
        if IFS= read -r _req <&3; then
            handle_line "$_pending$_req"
            _pending=
        else
            # EOF: no host is connected; keep any partial line and the open port.
            _pending=$_pending$_req
            sleep 0.05
        fi
    done
}

find_port() {
    for _p in /sys/class/virtio-ports/*; do
        [ -e "$_p/name" ] || continue
        getf "$_p/name"
        if [ "$V" = "$PORT_NAME" ] && [ -c "/dev/${_p##*/}" ]; then PORT=/dev/${_p##*/}; return 0; fi
    done
    return 1
}

boot() {
    mkdir -p /proc /sys /dev /tmp /run
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mount -t tmpfs -o mode=1777 tmpfs /tmp
    mount -t tmpfs -o mode=0755 tmpfs /run
    exec </dev/console >/dev/console 2>&1
    read -r _u _r </proc/uptime
    log "init at uptime $_u s"
    load_group boot || log "some boot modules failed to load"
    read -r _u _r </proc/uptime
    log "modules loaded at uptime $_u s"
}

main() {
    [ "$$" = 1 ] && boot
    KREL=$(uname -r)
    PORT=${1:-}
    if [ -z "$PORT" ]; then
        now_cs; _deadline=$((NOW + 2000))
        until find_port; do
            now_cs
            if [ "$NOW" -ge "$_deadline" ]; then
                log "FATAL: no virtio-serial port named $PORT_NAME"
                [ "$$" = 1 ] && poweroff -f
                exit 1
            fi
            sleep 0.02
        done
    fi
    while :; do
        serve "$PORT" || log "cannot open $PORT"
        sleep 1
    done
}

main "$@"
