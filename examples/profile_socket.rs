//! `profile_socket`: creates a UDP socket on 127.0.0.1 (no traffic) and a
//! local socket pair. The profile must say the network was used, with the
//! socket domains and types.
use std::process::ExitCode;

fn main() -> ExitCode {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0");
    let pair = std::os::unix::net::UnixStream::pair();
    match (udp, pair) {
        (Ok(_), Ok(_)) => ExitCode::SUCCESS,
        (u, p) => {
            eprintln!("socket failed: {:?} {:?}", u.err(), p.err());
            ExitCode::from(1)
        }
    }
}
