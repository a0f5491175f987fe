//! The binary's built-in bearer-JWT authentication: who may call, and tenant isolation.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::ServerProcess;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(user: &str, tenant: &str) -> Value {
    json!({"sub": user, "tenant_id": tenant, "exp": now() + 600, "role": "clerk"})
}

/// The events a `GET` of `url` with `token` answers.
async fn read_with(client: &reqwest::Client, url: &str, token: &str) -> Vec<Value> {
    let response = client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.unwrap()
}

fn event(n: usize, claimed_tenant: &str) -> Value {
    json!({
        "id": Uuid::now_v7(),
        "createdAt": "2024-12-04T10:00:15Z",
        "aggregateId": "order-1",
        "eventType": "OrderPurchasedEvent",
        "eventJson": format!("{{\"n\":{n}}}"),
        "userId": "someone-else",
        "tenantId": claimed_tenant,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_and_tenants_isolated() {
    let server = ServerProcess::start(&["--database", "memory", "--jwt-secret", SECRET]);
    let client = reqwest::Client::new();
    let events = format!("{}/events", server.base);

    // Refused: no token, wrong scheme, bad signature, expired, no tenant claim.
    let expired = hs256(
        &json!({"sub": "a", "tenant_id": "t", "exp": now() - 3600}),
        SECRET,
    );
    let forged = hs256(
        &claims("mallory", "tenant-a"),
        "another-secret-that-is-also-32-bytes-long!",
    );
    let tenantless = hs256(&json!({"sub": "a", "exp": now() + 600}), SECRET);
    // A blank tenant would make every such token one shared tenant.
    let blank_tenant = |tenant: &str| {
        hs256(
            &json!({"sub": "a", "tenant_id": tenant, "exp": now() + 600}),
            SECRET,
        )
    };
    // Meant for another service: no --jwt-audience names it.
    let for_billing = hs256(
        &json!({"sub": "a", "tenant_id": "t", "exp": now() + 600, "aud": "billing"}),
        SECRET,
    );
    let refused = [
        Some(format!("Bearer {for_billing}")),
        None,
        Some("Basic dXNlcjpwYXNz".to_owned()),
        Some(format!("Bearer {forged}")),
        Some(format!("Bearer {expired}")),
        Some(format!("Bearer {tenantless}")),
        Some(format!("Bearer {}", blank_tenant(""))),
        Some(format!("Bearer {}", blank_tenant(" \t"))),
        Some("Bearer not.a.jwt".to_owned()),
    ];
    for authorization in refused {
        let mut request = client.get(format!("{events}?after=0"));
        if let Some(value) = &authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
    }
    let expired_answer = client
        .get(format!("{events}?after=0"))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert!(expired_answer.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("expired"));
    // Health checks need no token, and without one say nothing of the traffic: the
    // head tells how much every tenant has written.
    let health = |token: Option<String>| {
        let mut request = client.get(format!("{}/healthz", server.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let anonymous = health(None).await;
    assert_eq!(anonymous, json!({"status": "ok", "writable": true}));
    assert_eq!(health(Some(expired.clone())).await, anonymous);

    // Alice (tenant-a) claims tenant-b in the body; Bob posts in tenant-b.
    let alice = hs256(&claims("alice", "tenant-a"), SECRET);
    let bob = hs256(&claims("bob", "tenant-b"), SECRET);
    assert_eq!(
        health(Some(alice.clone())).await,
        json!({"status": "ok", "writable": true, "head": 0}),
        "a caller with a valid token sees the head, where a client starts from now"
    );
    for n in 0..6 {
        let (token, tenant) = if n % 2 == 0 {
            (&alice, "tenant-b")
        } else {
            (&bob, "tenant-b")
        };
        let response = client
            .post(&events)
            .bearer_auth(token)
            .json(&event(n, tenant))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let seen_by_alice = read_with(&client, &format!("{events}?after=0"), &alice).await;
    let seen_by_bob = read_with(&client, &format!("{events}?after=0"), &bob).await;
    assert_eq!(seen_by_alice.len(), 3);
    assert_eq!(seen_by_bob.len(), 3);
    for event in &seen_by_alice {
        assert_eq!(
            (event["tenantId"].as_str(), event["userId"].as_str()),
            (Some("tenant-a"), Some("alice"))
        );
    }
    for event in &seen_by_bob {
        assert_eq!(
            (event["tenantId"].as_str(), event["userId"].as_str()),
            (Some("tenant-b"), Some("bob"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_public_key_verifies_tokens() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let server = ServerProcess::start(&[
        "--database",
        "memory",
        "--jwt-public-key",
        &format!("{fixtures}/es256-public.pem"),
        "--jwt-algorithm",
        "es256",
        "--jwt-issuer",
        "https://auth.example",
    ]);
    let private = std::fs::read(format!("{fixtures}/es256-private.pk8.pem")).unwrap();
    let key = EncodingKey::from_ec_pem(&private).unwrap();
    let sign = |claims: &Value| encode(&Header::new(Algorithm::ES256), claims, &key).unwrap();
    let client = reqwest::Client::new();
    let url = format!("{}/events?after=0", server.base);

    let mut good = claims("carol", "tenant-c");
    good["iss"] = json!("https://auth.example");
    let ok = client
        .get(&url)
        .bearer_auth(sign(&good))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let mut wrong_issuer = good.clone();
    wrong_issuer["iss"] = json!("https://elsewhere.example");
    let refused = client
        .get(&url)
        .bearer_auth(sign(&wrong_issuer))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // An HS256 token "signed" with the public key (algorithm confusion) is refused.
    let public = std::fs::read_to_string(format!("{fixtures}/es256-public.pem")).unwrap();
    let confused = hs256(&good, &public);
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(confused)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[test]
fn bad_key_configuration_fails_at_start_with_a_clear_message() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_distributed-events-server"))
        .args([
            "--database",
            "memory",
            "--bind",
            "127.0.0.1:0",
            "--jwt-secret",
            "short",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 32 bytes"), "{stderr}");
}

/// Many tenants post and long-poll at once, each post claiming some other tenant in its
/// body: every reader sees exactly its own tenant's events, in order, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tenants_never_see_each_other() {
    const TENANTS: usize = 8;
    const POSTS_PER_TENANT: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::sqlite(&dir.path().join("e.db"), &["--jwt-secret", SECRET]);
    let client = reqwest::Client::new();
    let token = |t: usize| {
        hs256(
            &claims(&format!("user-{t}"), &format!("tenant-{t}")),
            SECRET,
        )
    };

    // One long-polling reader per tenant, reading until it has its tenant's share.
    let mut readers = Vec::new();
    for t in 0..TENANTS {
        let (client, base, token) = (client.clone(), server.base.clone(), token(t));
        readers.push(tokio::spawn(async move {
            let mut after = 0u64;
            let mut seen: Vec<Value> = Vec::new();
            for _ in 0..10_000 {
                if seen.len() >= POSTS_PER_TENANT {
                    break;
                }
                // Small pages of different sizes: the tenant filter runs before the limit.
                let limit = 1 + (t + seen.len()) % 7;
                let response = client
                    .get(format!("{base}/events?after={after}&limit={limit}&wait=5"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                after = response.headers()["x-events-cursor"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                seen.extend(response.json::<Vec<Value>>().await.unwrap());
            }
            seen
        }));
    }
    // Writers: every tenant posts concurrently, each body naming a different tenant.
    let mut writers = Vec::new();
    for t in 0..TENANTS {
        let (client, base, token) = (client.clone(), server.base.clone(), token(t));
        writers.push(tokio::spawn(async move {
            for n in 0..POSTS_PER_TENANT {
                let spoofed = format!("tenant-{}", (t + n + 1) % TENANTS);
                let response = client
                    .post(format!("{base}/events"))
                    .bearer_auth(&token)
                    .json(&event(n, &spoofed))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    for (t, reader) in readers.into_iter().enumerate() {
        let seen = reader.await.unwrap();
        assert_eq!(
            seen.len(),
            POSTS_PER_TENANT,
            "tenant {t} saw a wrong number of events"
        );
        let own = format!("tenant-{t}");
        assert!(
            seen.iter().all(|e| e["tenantId"] == own.as_str()),
            "tenant {t} saw another tenant's event"
        );
        let positions: Vec<u64> = seen
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "tenant {t}: out of order"
        );
        let ns: Vec<String> = seen
            .iter()
            .map(|e| e["eventJson"].as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (0..POSTS_PER_TENANT)
            .map(|n| format!("{{\"n\":{n}}}"))
            .collect();
        assert_eq!(
            ns, expected,
            "tenant {t}: its own events, each once, in posting order"
        );
        // Timestamp mode is filtered the same way.
        let since = read_with(
            &client,
            &format!("{}/events?since=2024-01-01T00:00:00Z", server.base),
            &token(t),
        )
        .await;
        assert_eq!(since.len(), POSTS_PER_TENANT, "tenant {t}: since mode");
        assert!(
            since.iter().all(|e| e["tenantId"] == own.as_str()),
            "tenant {t} saw another tenant's event in since mode"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_public_key_verifies_tokens() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let server = ServerProcess::start(&[
        "--database",
        "memory",
        "--jwt-public-key",
        &format!("{fixtures}/rs256-public.pem"),
    ]);
    let private = std::fs::read(format!("{fixtures}/rs256-private.pem")).unwrap();
    let key = EncodingKey::from_rsa_pem(&private).unwrap();
    let url = format!("{}/events?after=0", server.base);
    let client = reqwest::Client::new();
    let signed = encode(
        &Header::new(Algorithm::RS256),
        &claims("dave", "tenant-d"),
        &key,
    )
    .unwrap();
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(signed)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let forged = hs256(&claims("dave", "tenant-d"), SECRET);
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(forged)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_audience_and_not_before_are_enforced_and_a_token_without_sub_claims_no_user() {
    let server = ServerProcess::start(&[
        "--database",
        "memory",
        "--jwt-secret",
        SECRET,
        "--jwt-issuer",
        "https://id.example",
        "--jwt-audience",
        "events",
    ]);
    let client = reqwest::Client::new();
    let events = format!("{}/events", server.base);
    let token = |extra: Value| {
        let mut claims = json!({"sub": "ada", "tenant_id": "t", "exp": now() + 600, "iss": "https://id.example", "aud": "events"});
        for (key, value) in extra.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        hs256(&claims, SECRET)
    };
    let status = |token: String| {
        let request = client.get(format!("{events}?after=0")).bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(status(token(json!({}))).await, 200);
    for (case, extra) in [
        ("no iss", json!({"iss": null})),
        ("another iss", json!({"iss": "https://evil.example"})),
        ("no aud", json!({"aud": null})),
        ("another aud", json!({"aud": "billing"})),
        ("not valid for an hour yet", json!({"nbf": now() + 3600})),
    ] {
        assert_eq!(status(token(extra)).await, 401, "{case}");
    }

    // A verified token without `sub`: the body's userId is not taken instead, neither
    // from its field nor from its context.
    let subless = token(json!({"sub": null}));
    let mut body = event(0, "t");
    body["context"] = json!({"userId": "admin", "tenantId": "acme", "role": "clerk"});
    let posted = client
        .post(&events)
        .bearer_auth(&subless)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 201);
    let seen = read_with(&client, &format!("{events}?after=0"), &subless).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0]["userId"],
        Value::Null,
        "not the body's `someone-else`"
    );
    assert_eq!(seen[0]["tenantId"], "t");
    assert_eq!(
        seen[0]["context"],
        json!({"role": "clerk"}),
        "identity keys in the body's context are dropped; the app's own entries stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_holding_its_long_poll_share_leaves_the_others_theirs() {
    // Three slots in all, two per tenant: without shares, tenant A's third poll would
    // take the last slot and B's poll would be refused.
    let server = ServerProcess::start(&[
        "--database",
        "memory",
        "--jwt-secret",
        SECRET,
        "--max-long-polls",
        "3",
        "--max-long-polls-per-tenant",
        "2",
    ]);
    let client = reqwest::Client::new();
    let events = format!("{}/events", server.base);
    let token_a = hs256(&claims("alice", "tenant-a"), SECRET);
    let token_b = hs256(&claims("bob", "tenant-b"), SECRET);

    // A long-poll that retries on 503 as a client does, until it gets events.
    let poll = |token: String| {
        let client = client.clone();
        let url = format!("{events}?after=0&wait=30");
        tokio::spawn(async move {
            for _ in 0..1500 {
                let response = client.get(&url).bearer_auth(&token).send().await.unwrap();
                if response.status() == 503 {
                    // Refused while the probe below held a slot: back off a little.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                assert_eq!(response.status(), 200);
                let page: Vec<Value> = response.json().await.unwrap();
                if !page.is_empty() {
                    return page;
                }
            }
            panic!("the long-poll never got an event");
        })
    };
    let holders = [poll(token_a.clone()), poll(token_a.clone())];

    // Once both of A's polls wait, A's next one is refused at once.
    let mut refusal = None;
    for _ in 0..600 {
        let response = client
            .get(format!("{events}?after=0&wait=0.05"))
            .bearer_auth(&token_a)
            .send()
            .await
            .unwrap();
        if response.status() == 503 {
            refusal = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let refusal = refusal.expect("tenant A's third long-poll was never refused");
    assert!(
        refusal.headers().contains_key("retry-after"),
        "503 without Retry-After"
    );
    let body: Value = refusal.json().await.unwrap();
    assert_eq!(body["code"], "overloaded", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("tenant"),
        "the refusal says the tenant's share is used up: {body}"
    );

    // Tenant B's long-poll is not refused: it waits for B's event (or, if it comes in
    // after the post, finds it at once) and gets it.
    let b_poll = {
        let client = client.clone();
        let url = format!("{events}?after=0&wait=30");
        let token = token_b.clone();
        tokio::spawn(async move { client.get(&url).bearer_auth(&token).send().await.unwrap() })
    };
    let post = |token: &str, n: usize, tenant: &str| {
        client
            .post(&events)
            .bearer_auth(token)
            .json(&event(n, tenant))
            .send()
    };
    assert_eq!(post(&token_b, 1, "tenant-b").await.unwrap().status(), 201);
    let answer = b_poll.await.unwrap();
    assert_eq!(
        answer.status(),
        200,
        "tenant B's long-poll answered normally"
    );
    let page: Vec<Value> = answer.json().await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["tenantId"], "tenant-b");

    // A's waiting polls are served as usual when A's event comes.
    assert_eq!(post(&token_a, 2, "tenant-a").await.unwrap().status(), 201);
    for holder in holders {
        let page = holder.await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0]["tenantId"], "tenant-a");
    }
}
