// ssh2probe HOST IDENTITY TARFILE|-: connection and command latency of an ssh2
// session (TCP+key exchange, auth, one command, a second), then how fast does an
// ssh2 (libssh2) channel
// carry a tar stream to `sleep D; tar -x -C /tmp/x` on HOST (as root), written
// in 512-byte writes (like lab-sync's tar::Builder writing straight into the
// channel) or through a 64 KiB BufWriter? The remote /tmp/x is replaced.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (host, id, tarf) = (&a[1], &a[2], &a[3]);
    let t0 = Instant::now();
    let tcp = TcpStream::connect((host.as_str(), 22)).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut s = ssh2::Session::new().unwrap();
    s.set_tcp_stream(tcp);
    s.handshake().unwrap();
    let t_kex = t0.elapsed();
    s.userauth_pubkey_file("root", None, std::path::Path::new(id), None).unwrap();
    let t_auth = t0.elapsed();
    // one command on the fresh connection, like lab's probe, then another
    let exec = |cmd: &str| {
        let t = Instant::now();
        let mut ch = s.channel_session().unwrap();
        ch.exec(cmd).unwrap();
        let mut o = String::new();
        ch.read_to_string(&mut o).unwrap();
        ch.wait_close().unwrap();
        t.elapsed()
    };
    let first = exec("cat /var/lib/lab/current 2>/dev/null || echo '0 none'");
    let second = exec("cat /var/lib/lab/current 2>/dev/null || echo '0 none'");
    println!(
        "connect+kex {:.1} ms, auth {:.1} ms, first command {:.1} ms, second command {:.1} ms",
        t_kex.as_secs_f64() * 1e3,
        (t_auth - t_kex).as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        second.as_secs_f64() * 1e3
    );
    if tarf == "-" {
        return;
    }
    let data = std::fs::read(tarf).unwrap();
    for delay in ["0", "0.3"] {
        for chunk in [512usize, 65536] {
            for buffered in [false, true] {
                if chunk == 65536 && buffered { continue; }
                let mut ch = s.channel_session().unwrap();
                ch.exec("rm -rf /tmp/x; mkdir /tmp/x").unwrap();
                let mut o = String::new(); ch.read_to_string(&mut o).unwrap(); ch.wait_close().unwrap();
                let t = Instant::now();
                let mut ch = s.channel_session().unwrap();
                ch.exec(&format!("sleep {delay}; tar -x -C /tmp/x")).unwrap();
                {
                    let mut w: Box<dyn Write> = if buffered { Box::new(std::io::BufWriter::with_capacity(65536, &mut ch)) } else { Box::new(&mut ch) };
                    for c in data.chunks(chunk) { w.write_all(c).unwrap(); }
                    w.flush().unwrap();
                }
                ch.send_eof().unwrap();
                let mut o = Vec::new(); ch.read_to_end(&mut o).unwrap();
                ch.wait_close().unwrap();
                println!("delay {delay:>3} s, {chunk:5}-byte writes{}: {:.3} s (exit {})", if buffered {" via BufWriter(64 KiB)"} else {""}, t.elapsed().as_secs_f64(), ch.exit_status().unwrap());
            }
        }
    }
}
