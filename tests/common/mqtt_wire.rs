//! MQTT packets as bytes, for tests that speak MQTT over a raw TCP stream
//! (crash and cluster tests that need thousands of cheap connections, fuzz
//! tests that need broken ones).

use tokio::{io::AsyncReadExt, net::TcpStream};

/// An MQTT UTF-8 string: length (2, big-endian) and bytes.
pub fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// A packet: its first byte, the remaining length (variable length), body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A CONNECT with a clean session and no keepalive, MQTT 5 or 3.1.1, with a
/// user name and password when given.
pub fn connect(client_id: &str, v5: bool, credentials: Option<(&str, &str)>) -> Vec<u8> {
    let mut body = string("MQTT");
    body.push(if v5 { 5 } else { 4 });
    body.push(if credentials.is_some() {
        0x02 | 0x80 | 0x40
    } else {
        0x02
    });
    body.extend_from_slice(&0u16.to_be_bytes());
    if v5 {
        body.push(0);
    }
    body.extend(string(client_id));
    if let Some((username, password)) = credentials {
        body.extend(string(username));
        body.extend(string(password));
    }
    packet(0x10, &body)
}

/// Reads one packet: its first byte and its body.
pub async fn read_packet(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let first = stream.read_u8().await?;
    let mut len = 0usize;
    for shift in 0..4 {
        let b = stream.read_u8().await?;
        len |= ((b & 0x7F) as usize) << (7 * shift);
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    Ok((first, body))
}
