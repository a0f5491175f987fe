//! Connection limits of the real binary, over raw sockets: slow, silent and half-closed
//! clients, and more connections than the process has file descriptors.

mod common;

use std::time::Duration;

use common::ServerProcess;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for anything the server should do within a few seconds.
const PATIENCE: Duration = Duration::from_secs(30);

async fn connect(server: &ServerProcess) -> TcpStream {
    let address = server.base.trim_start_matches("http://");
    tokio::time::timeout(PATIENCE, TcpStream::connect(address))
        .await
        .expect("the server's listener took no connection within 30 s")
        .expect("connect")
}

/// One HTTP/1 answer: its status line and body (read by `Content-Length`).
#[derive(Debug)]
struct Answer {
    status_line: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {self:?}"))
    }
}

/// Reads one answer, failing if none comes within [`PATIENCE`] or the server closes first.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> Answer {
    tokio::time::timeout(PATIENCE, async {
        let mut bytes = Vec::new();
        let head_end = loop {
            if let Some(end) = bytes.windows(4).position(|window| window == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "the server closed the connection without an answer; got {:?}",
                String::from_utf8_lossy(&bytes)
            );
            bytes.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = bytes[head_end..].to_vec();
        while body.len() < length {
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "the server closed the connection mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        Answer {
            status_line: head.lines().next().unwrap_or_default().to_owned(),
            body: String::from_utf8_lossy(&body[..length]).into_owned(),
        }
    })
    .await
    .expect("an answer within 30 s")
}

/// Waits until the server closes `stream` (a read returns end of file or a reset), failing
/// if it is still open after [`PATIENCE`] or if the server sends anything.
async fn closed_by_server(stream: &mut (impl AsyncRead + Unpin), what: &str) {
    let mut buffer = [0; 1024];
    match tokio::time::timeout(PATIENCE, stream.read(&mut buffer)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "{what}: expected the connection to be closed, got {:?}",
            String::from_utf8_lossy(&buffer[..n])
        ),
        Err(_) => panic!("{what}: still open after 30 s"),
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";

#[tokio::test]
async fn silent_connections_beyond_the_open_file_limit_do_not_lock_out_healthz() {
    // 128 descriptors: about 64 for connections, the rest kept for the store. The header
    // timeout is long, so only the cap (closing the connections that waited longest) can
    // make room.
    let server = ServerProcess::start_with_open_files(
        128,
        &["--database", "memory", "--header-read-timeout", "10min"],
    );
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(connect(&server).await);
    }
    for attempt in 0..3 {
        let mut stream = connect(&server).await;
        stream.write_all(HEALTHZ).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(
            answer.status_line.starts_with("HTTP/1.1 200"),
            "healthz #{attempt} with 200 silent connections open: {answer:?}"
        );
    }
}

#[tokio::test]
async fn a_connection_that_sends_no_whole_request_head_is_closed() {
    let server = ServerProcess::start(&[
        "--database",
        "memory",
        "--header-read-timeout",
        "1s",
        "--idle-timeout",
        "10min",
    ]);
    let mut silent = connect(&server).await;
    let mut partial = connect(&server).await;
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    closed_by_server(&mut silent, "a connection that sent nothing").await;
    closed_by_server(&mut partial, "a connection that sent half a head").await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = ServerProcess::start(&[
        "--database",
        "memory",
        "--header-read-timeout",
        "10min",
        "--idle-timeout",
        "1s",
    ]);
    let mut stream = connect(&server).await;
    for _ in 0..2 {
        stream.write_all(HEALTHZ).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.status_line.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
    closed_by_server(&mut stream, "an idle keep-alive connection").await;
}

#[tokio::test]
async fn a_trickled_body_is_answered_408_with_the_json_error() {
    let server = ServerProcess::start(&["--database", "memory", "--body-read-timeout", "1s"]);
    let mut stream = connect(&server).await;
    stream
        .write_all(
            b"POST /events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{",
        )
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 300 ms: the body would take a minute.
    let trickle = tokio::spawn(async move {
        for _ in 0..199 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let answer = read_answer(&mut reader).await;
    trickle.abort();
    assert!(answer.status_line.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(answer.json()["code"], "request_timeout", "{answer:?}");
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let server = ServerProcess::start(&["--database", "memory"]);
    for request in [
        HEALTHZ,
        b"GET /events?after=0&wait=0.5 HTTP/1.1\r\nHost: test\r\n\r\n",
    ] {
        let mut stream = connect(&server).await;
        stream.write_all(request).await.unwrap();
        stream.shutdown().await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.status_line.starts_with("HTTP/1.1 200"), "{answer:?}");
    }
}

#[tokio::test]
async fn expect_continue_with_a_body_over_the_limit_gets_413_at_once() {
    let server = ServerProcess::start(&["--database", "memory", "--max-body-bytes", "100"]);
    let mut stream = connect(&server).await;
    stream
        .write_all(
            b"POST /events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 101\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await;
    assert!(
        answer.status_line.starts_with("HTTP/1.1 413"),
        "the first answer must be the refusal, not `100 Continue`: {answer:?}"
    );
    assert_eq!(answer.json()["code"], "payload_too_large");
}

/// Sends polls that wait 10 ms on `stream` until one is refused `503`: then the
/// long-poll cap is full. Fails if none is refused within 1000 polls.
async fn poll_until_refused(stream: &mut TcpStream, parked: &mut [TcpStream]) -> Answer {
    let mut statuses = Vec::new();
    loop {
        stream
            .write_all(b"GET /events?after=0&wait=0.01 HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(stream).await;
        if answer.status_line.starts_with("HTTP/1.1 503") {
            return answer;
        }
        statuses.push(answer.status_line);
        // A parked poll that reached the server while a probe held a slot was refused:
        // send it again (each waits 30 s, as `park_polls(…, 30)` sent it).
        for poll in parked.iter_mut() {
            let mut byte = [0; 1];
            if let Ok(Ok(1..)) = tokio::time::timeout(Duration::ZERO, poll.peek(&mut byte)).await {
                let refused = read_answer(poll).await;
                assert!(
                    refused.status_line.starts_with("HTTP/1.1 503"),
                    "a poll was answered before any event: {refused:?}"
                );
                poll.write_all(b"GET /events?after=0&wait=30 HTTP/1.1\r\nHost: test\r\n\r\n")
                    .await
                    .unwrap();
            }
        }
        assert!(
            statuses.len() < 1000,
            "the long-poll cap never refused a poll: {:?}",
            &statuses[statuses.len() - 3..]
        );
    }
}

/// Opens `count` connections, each with a poll that waits `seconds`.
async fn park_polls(server: &ServerProcess, count: usize, seconds: u32) -> Vec<TcpStream> {
    let mut polls = Vec::new();
    for _ in 0..count {
        let mut stream = connect(server).await;
        stream
            .write_all(
                format!("GET /events?after=0&wait={seconds} HTTP/1.1\r\nHost: test\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        polls.push(stream);
    }
    polls
}

#[tokio::test]
async fn parked_polls_never_take_every_connection_slot() {
    // Asked for more long-polls than connections: the server lowers the long-poll cap to
    // 7 of the 8 connections.
    let server = ServerProcess::start(&[
        "--database",
        "memory",
        "--max-connections",
        "8",
        "--max-long-polls",
        "100",
    ]);
    // Eight polls that would wait a minute, on all eight connections: one is refused.
    let (refused, mut refusals) = tokio::sync::mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for mut poll in park_polls(&server, 8, 60).await {
        let refused = refused.clone();
        readers.push(tokio::spawn(async move {
            let answer = read_answer(&mut poll).await;
            let _ = refused.send(answer);
            poll
        }));
    }
    let answer = tokio::time::timeout(PATIENCE, refusals.recv())
        .await
        .expect("none of 8 polls on 8 connections was refused within 30 s")
        .unwrap();
    assert!(answer.status_line.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert_eq!(answer.json()["code"], "overloaded", "{answer:?}");
    // Seven polls still wait, and every connection slot is taken: `/healthz` still
    // gets one (the refused poll's connection, now idle, makes room).
    let mut health = connect(&server).await;
    health.write_all(HEALTHZ).await.unwrap();
    let answer = read_answer(&mut health).await;
    assert!(answer.status_line.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        refusals.try_recv().is_err(),
        "only one of the 8 polls is refused"
    );
    for reader in readers {
        reader.abort();
    }
}

/// At the cap, the connection that waits for a request is closed to make room, and
/// those answering a request (parked long-polls) are left alone.
#[tokio::test]
async fn the_cap_closes_a_waiting_connection_never_one_with_a_request_in_flight() {
    let server = ServerProcess::start(&[
        "--database",
        "memory",
        "--max-connections",
        "4",
        "--max-long-polls",
        "3",
    ]);
    let mut polls = park_polls(&server, 3, 30).await;
    // The fourth connection asks until the long-poll limit refuses it: then all three
    // polls are parked, and it is the one connection waiting for a request.
    let mut idle = connect(&server).await;
    poll_until_refused(&mut idle, &mut polls).await;
    let mut late = connect(&server).await;
    late.write_all(HEALTHZ).await.unwrap();
    let answer = read_answer(&mut late).await;
    assert!(answer.status_line.starts_with("HTTP/1.1 200"), "{answer:?}");
    closed_by_server(
        &mut idle,
        "the connection waiting for a request, at the cap",
    )
    .await;

    let event = serde_json::json!({
        "id": uuid::Uuid::now_v7(),
        "createdAt": "2024-12-04T10:00:15Z",
        "aggregateId": "order-1",
        "eventType": "OrderPurchasedEvent",
        "eventJson": "{}",
    })
    .to_string();
    late.write_all(
        format!(
            "POST /events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{event}",
            event.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = read_answer(&mut late).await;
    assert!(answer.status_line.starts_with("HTTP/1.1 201"), "{answer:?}");
    for (n, stream) in polls.iter_mut().enumerate() {
        let answer = read_answer(stream).await;
        assert!(
            answer.status_line.starts_with("HTTP/1.1 200"),
            "poll {n}: {answer:?}"
        );
        assert_eq!(
            answer.json().as_array().map(Vec::len),
            Some(1),
            "poll {n}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn a_page_still_being_sent_is_never_closed_to_make_room() {
    let server = ServerProcess::start(&[
        "--database",
        "memory",
        "--max-connections",
        "2",
        "--max-page-bytes",
        "16777216",
    ]);
    // About 10 MB of events: more than the sockets buffer between server and client.
    let http = reqwest::Client::new();
    for n in 0..100 {
        let event = serde_json::json!({
            "id": uuid::Uuid::now_v7(),
            "createdAt": "2024-12-04T10:00:15Z",
            "aggregateId": format!("order-{n}"),
            "eventType": "OrderPurchasedEvent",
            "eventJson": serde_json::json!({"pad": "x".repeat(100_000)}).to_string(),
        });
        let response = http
            .post(format!("{}/events", server.base))
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
    }

    // Live reads may lag the commit a moment (the tail answers with what it has): wait
    // until one page from the start holds all 100, as the slow reader's page must.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (page, _, _) =
            common::read_page(&http, &format!("{}/events?after=0&limit=1000", server.base)).await;
        if page.len() == 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 100th event is not served after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A reader that takes the answer's head, then nothing more for now: the server is
    // left writing the body.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = server.base.trim_start_matches("http://").parse().unwrap();
    let mut slow = socket.connect(address).await.unwrap();
    slow.write_all(b"GET /events?after=0&limit=1000 HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0; 1024];
        let n = tokio::time::timeout(PATIENCE, slow.read(&mut chunk))
            .await
            .expect("the page's head within 30 s")
            .unwrap();
        assert!(n > 0, "closed before the page's head");
        received.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Both slots taken (one by a connection that sends nothing), then a third connection:
    // the cap makes room by closing the silent one, not the one still sending its page.
    let _silent = connect(&server).await;
    let mut health = connect(&server).await;
    health.write_all(HEALTHZ).await.unwrap();
    let answer = read_answer(&mut health).await;
    assert!(answer.status_line.starts_with("HTTP/1.1 200"), "{answer:?}");

    // Read on until the body is whole by its framing, or the server closes.
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let mut body = received[head_end..].to_vec();
    tokio::time::timeout(PATIENCE, async {
        loop {
            let whole = match length {
                Some(length) => body.len() >= length,
                None => chunked && body.ends_with(b"\r\n0\r\n\r\n"),
            };
            if whole {
                break;
            }
            let mut chunk = [0; 65536];
            match slow.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the whole page, or the connection closed, within 30 s");
    // Cut short, the page would not parse.
    let json = if chunked {
        dechunk(&body)
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    let page: Vec<Value> = serde_json::from_str(&json).unwrap_or_else(|error| {
        panic!(
            "the page arrived cut short ({error}): {} of its bytes",
            body.len()
        )
    });
    let positions: Vec<u64> = page.iter().filter_map(|e| e["position"].as_u64()).collect();
    assert_eq!(positions, (1..=100).collect::<Vec<_>>());
}

/// The payload of a chunked HTTP/1 body (as far as it is whole).
fn dechunk(mut body: &[u8]) -> String {
    let mut payload = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..line_end]).trim(), 16)
            .unwrap_or(0);
        let end = line_end + 2 + size;
        if size == 0 || body.len() < end + 2 {
            break;
        }
        payload.extend_from_slice(&body[line_end + 2..end]);
        body = &body[end + 2..];
    }
    String::from_utf8_lossy(&payload).into_owned()
}
