//! The server fetches reference images itself, never through a proxy named in its environment:
//! a proxy would resolve the host again, out of reach of the private-address check.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::server_process::{KEY, ServerProcess};

/// A one-file HTTP server on loopback that counts the connections it gets.
fn counting_server(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (url, hits)
}

fn png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[test]
fn reference_images_are_fetched_directly_whatever_the_proxy_variables_say() {
    let (host, host_hits) = counting_server(png());
    let (proxy, proxy_hits) = counting_server(png());
    let data_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_configured(data_dir.path(), "127.0.0.1:0", |command| {
        command.arg("--allow-private-urls");
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "all_proxy",
        ] {
            command.env(name, &proxy);
        }
        command.env_remove("NO_PROXY").env_remove("no_proxy");
    });
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/api/v3/images/generations", server.url))
        .bearer_auth(KEY)
        .json(&serde_json::json!({
            "model": "tiny-sd",
            "prompt": "a lighthouse",
            "steps": 2,
            "strength": 0.5,
            "image": format!("{host}/reference.png"),
        }))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().unwrap());
    assert_eq!(host_hits.load(Ordering::SeqCst), 1);
    assert_eq!(proxy_hits.load(Ordering::SeqCst), 0);
}
