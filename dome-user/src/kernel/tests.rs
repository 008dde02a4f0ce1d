use super::*;

/// Found in review: a map error both printed its cause and named it as
/// its source, so a log line made with `error_chain` said it twice; and
/// a syscall's errno, which aya keeps as the source of its error, must
/// still be said (once) in the text a `%e` log line shows.
#[test]
fn a_kernel_errors_causes_are_each_said_once() {
    let denied = || aya::sys::SyscallError {
        call: "bpf_map_update_elem",
        io_error: std::io::Error::from_raw_os_error(libc::EPERM),
    };
    for (e, causes) in [
        (
            map_err("IDENTITIES")(MapError::KeyNotFound),
            &["key not found"][..],
        ),
        (
            map_err("IDENTITIES")(MapError::SyscallError(denied())),
            &["bpf_map_update_elem", "os error 1"],
        ),
        (XdpError::from(ProgramError::NotLoaded), &["not loaded"]),
        (
            XdpError::from(ProgramError::SyscallError(denied())),
            &["bpf_map_update_elem", "os error 1"],
        ),
    ] {
        let (text, chain) = (e.to_string(), crate::error_chain(&e));
        for cause in causes {
            assert_eq!(text.matches(cause).count(), 1, "{cause} in {text}");
            assert_eq!(chain.matches(cause).count(), 1, "{cause} in {chain}");
        }
    }
}
