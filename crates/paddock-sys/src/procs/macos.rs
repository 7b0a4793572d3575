//! macOS: everything [`super`] offers, from libproc (`proc_listallpids`,
//! `proc_pidinfo`, `proc_pidfdinfo`, `proc_regionfilename`) and sysctl
//! (`KERN_PROCARGS2`).
//!
//! This file is type-checked for `aarch64-apple-darwin` on every CI run
//! (`.ci/macos-check`), which also evaluates the layout assertions below against
//! the target; it has not run on a Mac here. The structures libc does not declare
//! are written from xnu's `bsd/sys/proc_info.h`, with their sizes asserted.

use std::collections::{BTreeSet, HashMap};
use std::ffi::c_void;
use std::mem::{size_of, zeroed};

use super::ProcInfo;

const PROC_PIDLISTFDS: libc::c_int = 1;
const PROC_PIDTBSDINFO: libc::c_int = 3;
const PROC_PIDTASKINFO: libc::c_int = 4;
const PROC_PIDREGIONINFO: libc::c_int = 7;
const PROC_PIDFDSOCKETINFO: libc::c_int = 3;
const PROX_FDTYPE_SOCKET: u32 = 2;
const SOCKINFO_TCP: i32 = 2;
const TSI_S_LISTEN: i32 = 1;
const SZOMB: u32 = 5;

#[repr(C)]
#[derive(Clone, Copy)]
struct ProcFdInfo {
    proc_fd: i32,
    proc_fdtype: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ProcFileInfo {
    fi_openflags: u32,
    fi_status: u32,
    fi_offset: i64,
    fi_type: i32,
    fi_guardflags: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct VinfoStat {
    vst_dev: u32,
    vst_mode: u16,
    vst_nlink: u16,
    vst_ino: u64,
    vst_uid: u32,
    vst_gid: u32,
    vst_times: [i64; 8],
    vst_size: i64,
    vst_blocks: i64,
    vst_blksize: i32,
    vst_flags: u32,
    vst_gen: u32,
    vst_rdev: u32,
    vst_qspare: [i64; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SockbufInfo {
    sbi_cc: u32,
    sbi_hiwat: u32,
    sbi_mbcnt: u32,
    sbi_mbmax: u32,
    sbi_lowat: u32,
    sbi_flags: i16,
    sbi_timeo: i16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct InSockInfo {
    insi_fport: i32,
    /// The local port, in network byte order in the low 16 bits.
    insi_lport: i32,
    insi_gencnt: u64,
    insi_flags: u32,
    insi_flow: u32,
    insi_vflag: u8,
    insi_ip_ttl: u8,
    rfu_1: u32,
    insi_faddr: [u32; 4],
    insi_laddr: [u32; 4],
    insi_v4_tos: u8,
    insi_v6_hlim: u8,
    insi_v6_cksum: i32,
    insi_v6_ifindex: u16,
    insi_v6_hops: i16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TcpSockInfo {
    tcpsi_ini: InSockInfo,
    tcpsi_state: i32,
    tcpsi_timer: [i32; 4],
    tcpsi_mss: i32,
    tcpsi_flags: u32,
    rfu_1: u32,
    tcpsi_tp: u64,
}

/// `soi_proto`: the TCP variant, or the largest one's bytes (`un_sockinfo`).
#[repr(C)]
#[derive(Clone, Copy)]
union SoiProto {
    pri_tcp: TcpSockInfo,
    raw: [u8; 528],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SocketInfo {
    soi_stat: VinfoStat,
    soi_so: u64,
    soi_pcb: u64,
    soi_type: i32,
    soi_protocol: i32,
    soi_family: i32,
    soi_options: i16,
    soi_linger: i16,
    soi_state: i16,
    soi_qlen: i16,
    soi_incqlen: i16,
    soi_qlimit: i16,
    soi_timeo: i16,
    soi_error: u16,
    soi_oobmark: u32,
    soi_rcv: SockbufInfo,
    soi_snd: SockbufInfo,
    soi_kind: i32,
    rfu_1: u32,
    soi_proto: SoiProto,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SocketFdInfo {
    pfi: ProcFileInfo,
    psi: SocketInfo,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ProcRegionInfo {
    pri_protection: u32,
    pri_max_protection: u32,
    pri_inheritance: u32,
    pri_flags: u32,
    pri_offset: u64,
    pri_counts: [u32; 14],
    pri_address: u64,
    pri_size: u64,
}

// The sizes xnu's headers give: a wrong field would misplace every one after it.
const _: () = assert!(size_of::<ProcFdInfo>() == 8);
const _: () = assert!(size_of::<ProcFileInfo>() == 24);
const _: () = assert!(size_of::<VinfoStat>() == 136);
const _: () = assert!(size_of::<SockbufInfo>() == 24);
const _: () = assert!(size_of::<InSockInfo>() == 80);
const _: () = assert!(size_of::<TcpSockInfo>() == 120);
const _: () = assert!(size_of::<SocketInfo>() == 768);
const _: () = assert!(size_of::<SocketFdInfo>() == 792);
const _: () = assert!(size_of::<ProcRegionInfo>() == 96);
const _: () = assert!(size_of::<libc::proc_bsdinfo>() == 136);
const _: () = assert!(size_of::<libc::proc_taskinfo>() == 96);

/// `proc_pidinfo` of one fixed-size structure; None unless the kernel filled it.
fn pidinfo<T: Copy>(pid: i32, flavor: libc::c_int, arg: u64) -> Option<T> {
    // SAFETY: T is a plain-data repr(C) struct (all fields integers), so all-zero
    // bytes are a valid value; the kernel writes at most size_of::<T>() bytes into
    // it, and we use it only when it wrote exactly that many.
    unsafe {
        let mut v: T = zeroed();
        let n = libc::proc_pidinfo(
            pid,
            flavor,
            arg,
            (&mut v as *mut T).cast::<c_void>(),
            size_of::<T>() as libc::c_int,
        );
        (n as usize == size_of::<T>()).then_some(v)
    }
}

pub fn stat(pid: i32) -> Option<ProcInfo> {
    let b: libc::proc_bsdinfo = pidinfo(pid, PROC_PIDTBSDINFO, 0)?;
    // SAFETY: getsid only reads the process table.
    let sid = unsafe { libc::getsid(pid) };
    Some(ProcInfo {
        pid,
        ppid: b.pbi_ppid as i32,
        pgid: b.pbi_pgid as i32,
        sid,
        zombie: b.pbi_status == SZOMB,
        start_time: b.pbi_start_tvsec * 1_000_000 + b.pbi_start_tvusec,
    })
}

fn all_pids() -> Vec<i32> {
    // SAFETY: a null buffer asks for the count only.
    let n = unsafe { libc::proc_listallpids(std::ptr::null_mut(), 0) };
    if n <= 0 {
        return vec![];
    }
    // Room for processes started between the two calls.
    let mut pids = vec![0i32; n as usize + 64];
    // SAFETY: the buffer holds pids.len() i32s and its size in bytes is passed.
    let got = unsafe {
        libc::proc_listallpids(
            pids.as_mut_ptr().cast::<c_void>(),
            (pids.len() * size_of::<i32>()) as libc::c_int,
        )
    };
    pids.truncate(got.max(0) as usize);
    pids.retain(|&p| p > 0);
    pids
}

pub fn all_processes() -> Vec<ProcInfo> {
    all_pids().into_iter().filter_map(stat).collect()
}

/// `KERN_PROCARGS2`: argc, the executable's path, then argv and the environment,
/// NUL-separated.
fn procargs(pid: i32) -> Option<(Vec<String>, Vec<String>)> {
    let mut mib = [libc::CTL_KERN, libc::KERN_PROCARGS2, pid];
    let mut size: libc::size_t = 0;
    // SAFETY: a null buffer asks for the size only; mib has 3 entries.
    let r = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            3,
            std::ptr::null_mut(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if r != 0 || size < 4 {
        return None;
    }
    let mut buf = vec![0u8; size];
    // SAFETY: buf holds `size` bytes, and `size` tells the kernel so.
    let r = unsafe {
        libc::sysctl(
            mib.as_mut_ptr(),
            3,
            buf.as_mut_ptr().cast::<c_void>(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if r != 0 || size < 4 {
        return None;
    }
    buf.truncate(size);
    let argc = i32::from_ne_bytes(buf[..4].try_into().ok()?).max(0) as usize;
    // Skip the executable's path and the NULs that pad it.
    let rest = &buf[4..];
    let path_end = rest.iter().position(|&b| b == 0)?;
    let mut i = path_end;
    while i < rest.len() && rest[i] == 0 {
        i += 1;
    }
    let mut strings = rest[i..]
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned());
    let argv: Vec<String> = strings.by_ref().take(argc).collect();
    let env = strings.take_while(|s| !s.is_empty()).collect();
    Some((argv, env))
}

pub fn cmdline(pid: i32) -> String {
    procargs(pid).map(|(a, _)| a.join(" ")).unwrap_or_default()
}

pub fn environ(pid: i32) -> HashMap<String, String> {
    procargs(pid)
        .map(|(_, env)| {
            env.iter()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The files mapped into `pid`, region by region (the dyld images among them):
/// what `paddock doctor` reads to find two OpenMP runtimes in one process.
pub fn mapped_files(pid: i32) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut address = 0u64;
    // A bound, in case the kernel ever answered the same region forever.
    for _ in 0..200_000 {
        let Some(r) = pidinfo::<ProcRegionInfo>(pid, PROC_PIDREGIONINFO, address) else {
            break;
        };
        let mut path = [0u8; libc::PATH_MAX as usize];
        // SAFETY: the buffer holds PATH_MAX bytes and its size is passed.
        let n = unsafe {
            libc::proc_regionfilename(
                pid,
                r.pri_address,
                path.as_mut_ptr().cast::<c_void>(),
                path.len() as u32,
            )
        };
        if n > 0 {
            out.insert(String::from_utf8_lossy(&path[..n as usize]).into_owned());
        }
        let next = r.pri_address.saturating_add(r.pri_size);
        if next <= address {
            break;
        }
        address = next;
    }
    out
}

pub fn thread_count(pid: i32) -> Option<usize> {
    let t: libc::proc_taskinfo = pidinfo(pid, PROC_PIDTASKINFO, 0)?;
    Some(t.pti_threadnum.max(0) as usize)
}

pub fn rss_bytes(pid: i32) -> Option<u64> {
    let t: libc::proc_taskinfo = pidinfo(pid, PROC_PIDTASKINFO, 0)?;
    Some(t.pti_resident_size)
}

/// The most memory the process has held: its lifetime maximum physical footprint
/// (`proc_pid_rusage`, `RUSAGE_INFO_V4`), which on Apple Silicon also counts what
/// it holds of the unified memory for the GPU.
pub fn peak_rss_bytes(pid: i32) -> Option<u64> {
    // SAFETY: rusage_info_v4 is plain old data, for which all zeroes is valid.
    let mut info: libc::rusage_info_v4 = unsafe { zeroed() };
    // SAFETY: the buffer is a rusage_info_v4, the structure the V4 flavour fills
    // (the C prototype takes it as a `rusage_info_t *`).
    let rc = unsafe {
        libc::proc_pid_rusage(
            pid,
            libc::RUSAGE_INFO_V4,
            (&mut info as *mut libc::rusage_info_v4).cast::<libc::rusage_info_t>(),
        )
    };
    (rc == 0).then_some(info.ri_lifetime_max_phys_footprint)
}

/// Whether `pid` holds a TCP socket listening on `port`.
fn listens(pid: i32, port: u16) -> bool {
    let Some(b) = pidinfo::<libc::proc_bsdinfo>(pid, PROC_PIDTBSDINFO, 0) else {
        return false;
    };
    let mut fds = vec![
        ProcFdInfo {
            proc_fd: 0,
            proc_fdtype: 0
        };
        b.pbi_nfiles as usize + 16
    ];
    // SAFETY: the buffer holds fds.len() entries and its size in bytes is passed.
    let n = unsafe {
        libc::proc_pidinfo(
            pid,
            PROC_PIDLISTFDS,
            0,
            fds.as_mut_ptr().cast::<c_void>(),
            (fds.len() * size_of::<ProcFdInfo>()) as libc::c_int,
        )
    };
    let count = (n.max(0) as usize / size_of::<ProcFdInfo>()).min(fds.len());
    fds[..count]
        .iter()
        .filter(|f| f.proc_fdtype == PROX_FDTYPE_SOCKET)
        .any(|f| {
            // SAFETY: SocketFdInfo is plain data (all-zero is valid); the kernel
            // writes at most its size, and we read it only when it wrote all of it.
            let info = unsafe {
                let mut s: SocketFdInfo = zeroed();
                let w = libc::proc_pidfdinfo(
                    pid,
                    f.proc_fd,
                    PROC_PIDFDSOCKETINFO,
                    (&mut s as *mut SocketFdInfo).cast::<c_void>(),
                    size_of::<SocketFdInfo>() as libc::c_int,
                );
                (w as usize == size_of::<SocketFdInfo>()).then_some(s)
            };
            let Some(info) = info else { return false };
            if info.psi.soi_kind != SOCKINFO_TCP {
                return false;
            }
            // SAFETY: soi_kind says the union holds the TCP variant.
            let tcp = unsafe { info.psi.soi_proto.pri_tcp };
            tcp.tcpsi_state == TSI_S_LISTEN && u16::from_be(tcp.tcpsi_ini.insi_lport as u16) == port
        })
}

/// Whether something listens on `port` that we cannot see: binding it fails.
fn bound_by_someone(port: u16) -> bool {
    ["127.0.0.1", "0.0.0.0"].iter().any(|host| {
        matches!(std::net::TcpListener::bind((*host, port)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
    })
}

pub fn listener_pids(port: u16) -> Option<Vec<i32>> {
    let pids: Vec<i32> = all_pids()
        .into_iter()
        .filter(|&p| listens(p, port))
        .collect();
    if pids.is_empty() && !bound_by_someone(port) {
        return None;
    }
    Some(pids)
}

pub fn any_listens(pids: &[i32], port: u16) -> bool {
    pids.iter().any(|&p| listens(p, port))
}

pub fn available() -> bool {
    true
}

pub fn cgroup_oom_kills() -> Option<u64> {
    None
}
