//! RFC 8448 §3 (a TLS 1.3 handshake's published trace, TLS_AES_128_GCM_SHA256) and records
//! sealed here for the other suites and for KeyUpdate.

use observer_common::{Call, Direction, KEYS_DUMP_LEN, Kind, Role};

use super::{
    Keyed, Layout, LostReason,
    keys::{Suite, TrafficKeys},
    records::{Lost, Stream},
};
use crate::events::Event;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

const CLIENT_SECRET: &str = "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5";
const SERVER_SECRET: &str = "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643";
/// The server's NewSessionTicket, record 0 of its application keys.
const TICKET: &str = "17030300de3a6b8f90414a97d6959c3487680de5134a2b240e6cffac116e95d41d6af8f6b580dcf3d11d63c758db289a015940252f55713e061dc13e078891a38efbcf5753ad8ef170ad3c7353d16d9da773b9ca7f2b9fa1b6c0d4a3d03f75e09c30ba1e62972ac46f75f7b981be63439b2999ce13064615139891d5e4c5b406f16e3fc181a77ca475840025db2f0a77f81b5ab05b94c01346755f69232c86519d86cbeeac87aac347d143f9605d64f650db4d023e70e952ca49fe5137121c74bc2697687e248746d6df353005f3bce18696129c8153556b3b6c6779b37bf15985684f";
/// The client's 50 bytes 00..31, its record 0.
const CLIENT_DATA: &str = "1703030043a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b9819a8a5b46b395bd54a9a20441e2b62974e1f5a6292a2977014bd1e3deae63aeebb21694915e4";
/// The server's 50 bytes 00..31, its record 1.
const SERVER_DATA: &str = "17030300432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36e30efaf97d90e6dffc602dcb501a59a8fcc49c4bf2e5f0a21c0047c2abf332540dd032e167c2955d";

fn fifty() -> Vec<u8> {
    (0..50).collect()
}

fn client_keys() -> TrafficKeys {
    TrafficKeys::new(Suite::Aes128Gcm, &hex(CLIENT_SECRET)).expect("keys")
}

fn server_keys() -> TrafficKeys {
    TrafficKeys::new(Suite::Aes128Gcm, &hex(SERVER_SECRET)).expect("keys")
}

#[test]
fn rfc8448_records_open_with_keys_from_their_secrets() {
    let record = hex(CLIENT_DATA);
    let header = record[..5].try_into().expect("header");
    let inner = client_keys().open(0, &header, &record[5..]).expect("tag matches");
    assert_eq!(inner[..50], fifty()[..]);
    assert_eq!(inner[50], 23, "application data");
    assert!(client_keys().open(1, &header, &record[5..]).is_none(), "another number, another nonce");
    assert!(server_keys().open(0, &header, &record[5..]).is_none(), "the other direction's keys");
}

#[test]
fn any_part_of_a_record_decrypts_alone() {
    let record = hex(SERVER_DATA);
    let mut middle = record[5 + 17..5 + 40].to_vec();
    server_keys().decrypt_at(1, &[0; 8], 17, &mut middle);
    assert_eq!(middle, fifty()[17..40]);
}

#[test]
fn a_stream_skips_the_ticket_and_hands_over_application_data() {
    let mut stream = Stream::new(server_keys(), 0);
    let mut wire = hex(TICKET);
    wire.extend(hex(SERVER_DATA));
    let plain = stream.call(wire.len(), &wire, &[]).expect("records");
    assert_eq!(plain.len, 50, "the ticket is not application data");
    assert_eq!(plain.head, fifty());
    assert_eq!(stream.checked, 1, "the first record's tag; the next one's type decrypted alone");
}

#[test]
fn a_header_read_alone_then_its_body() {
    let mut stream = Stream::new(client_keys(), 0);
    let wire = hex(CLIENT_DATA);
    let first = stream.call(5, &wire[..5], &[]).expect("header");
    assert_eq!(first.len, 0);
    let plain = stream.call(wire.len() - 5, &wire[5..], &[]).expect("body");
    assert_eq!((plain.len, plain.head.as_slice()), (50, &fifty()[..]));
}

#[test]
fn a_call_captured_in_part_gives_its_head_and_its_tail() {
    let mut stream = Stream::new(client_keys(), 0);
    let wire = hex(CLIENT_DATA);
    // Head: the header and 10 bytes; tail: the last 32 (15 of data, type, tag).
    let plain = stream.call(wire.len(), &wire[..15], &wire[wire.len() - 32..]).expect("records");
    assert_eq!(plain.len, 50);
    assert_eq!(plain.head, fifty()[..10]);
    assert_eq!(plain.tail, fifty()[35..]);
    assert_eq!(stream.checked, 0, "not whole: no tag to check");
}

#[test]
fn a_header_never_captured_loses_the_stream() {
    let mut stream = Stream::new(client_keys(), 0);
    let mut wire = hex(CLIENT_DATA);
    wire.extend(hex(CLIENT_DATA));
    assert_eq!(stream.call(wire.len(), &wire[..20], &wire[wire.len() - 8..]), Err(Lost::HeaderNotCaptured));
}

#[test]
fn a_record_under_other_keys_is_refused() {
    let mut stream = Stream::new(server_keys(), 0);
    let wire = hex(CLIENT_DATA);
    assert_eq!(stream.call(wire.len(), &wire, &[]), Err(Lost::WrongKeys));
    let mut stream = Stream::new(client_keys(), 0);
    assert_eq!(stream.call(7, b"GET / H", &[]), Err(Lost::Malformed));
}

#[test]
fn key_update_moves_a_stream_to_the_next_keys() {
    for suite in Suite::ALL {
        let secret = vec![7u8; suite.secret_len()];
        let keys = TrafficKeys::new(suite, &secret).expect("keys");
        let next = keys.next().expect("next");
        let mut wire = keys.seal(0, b"GET / HTTP/1.1\r\n\r\n\x17");
        // KeyUpdate(update_not_requested), content type handshake.
        wire.extend(keys.seal(1, &[24, 0, 0, 1, 0, 22]));
        wire.extend(next.seal(0, b"GET /b HTTP/1.1\r\n\r\n\x17"));
        let mut stream = Stream::new(keys, 0);
        let plain = stream.call(wire.len(), &wire, &[]).expect("records");
        assert_eq!(plain.head, b"GET / HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", "{suite:?}");
        assert_eq!(stream.checked, 1);
    }
}

fn event<'a>(kind: Kind, call: Call, head: &'a [u8]) -> Event<'a> {
    Event {
        ts_ns: 1,
        kind,
        call,
        role: Role::Server,
        ret: head.len() as i64,
        conn: 42,
        tgid: 7,
        fd: 3,
        child: 0,
        port: 0,
        lost_before: false,
        new_conn: false,
        wait_ns: None,
        frames: false,
        cipher: false,
        seq: 0,
        head,
        tail: &[],
        tcp: None,
    }
}

/// A session's memory with the two secrets where OpenSSL 3.0.19 keeps them.
fn memory(client: &[u8], server: &[u8]) -> Vec<u8> {
    let mut memory: Vec<u8> = (0..KEYS_DUMP_LEN).map(|i| (i * 31 % 251) as u8).collect();
    memory[1860..1860 + client.len()].copy_from_slice(client);
    memory[1924..1924 + server.len()].copy_from_slice(server);
    memory
}

#[test]
fn the_layout_is_learned_from_a_first_connection_then_secrets_suffice() {
    let mut keyed = Keyed::default();
    assert!(
        keyed
            .keys(&event(Kind::Keys, Call::None, &memory(&hex(CLIENT_SECRET), &hex(SERVER_SECRET))))
            .is_none()
    );
    let request = hex(CLIENT_DATA);
    // The header read alone, flagged new: the flag waits for the plaintext.
    let mut first = event(Kind::Data, Call::Read, &request[..5]);
    first.new_conn = true;
    assert!(keyed.data(&first).is_none());
    let plain = keyed.data(&event(Kind::Data, Call::Read, &request[5..])).expect("request");
    assert_eq!((plain.plain.head.as_slice(), plain.carry.new_conn), (&fifty()[..], true));
    let response = hex(SERVER_DATA);
    let plain = keyed.data(&event(Kind::Data, Call::Write, &response)).expect("response");
    assert_eq!(plain.plain.head, fifty());
    let layout = Layout { client: Some(1860), server: Some(1924), tickets: Some(1) };
    assert_eq!(keyed.layout(7), layout);
    assert_eq!(keyed.take_learned(), vec![(7, layout)]);
    keyed.close(42);

    // The next connection: the kernel hands over the secrets, TLS 1.3's 48 bytes each first.
    let mut secrets = vec![0u8; observer_common::KEYS_SECRETS_LEN];
    secrets[..32].copy_from_slice(&hex(CLIENT_SECRET));
    secrets[48..80].copy_from_slice(&hex(SERVER_SECRET));
    assert!(keyed.keys(&event(Kind::Keys, Call::None, &secrets)).is_none());
    assert!(keyed.data(&event(Kind::Data, Call::Read, &request)).is_some());
    // A response too long to be copied whole is numbered as learned, if it then starts
    // like one.
    let response = server_keys().seal(1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\x17");
    let mut partial = event(Kind::Data, Call::Write, &response[..20]);
    partial.ret = response.len() as i64;
    let plain = keyed.data(&partial).expect("response");
    assert_eq!((plain.plain.len, plain.plain.head.as_slice()), (40, &b"HTTP/1.1 200 OK"[..]));
    assert_eq!(keyed.take_counts().0, 2);
}

#[test]
fn a_request_read_with_the_handshakes_last_record_comes_with_the_keys() {
    let mut keyed = Keyed::default();
    // Read inside the handshake: a plaintext record, an encrypted one under other keys (the
    // client's Finished, under its handshake keys), then the request.
    let handshake_keys = TrafficKeys::new(Suite::Aes128Gcm, &[9; 32]).expect("keys");
    let mut early = vec![20, 3, 3, 0, 1, 1];
    early.extend(handshake_keys.seal(0, b"finished\x16"));
    early.extend(hex(CLIENT_DATA));
    assert!(keyed.data(&event(Kind::Data, Call::Read, &early)).is_none());
    let memory = memory(&hex(CLIENT_SECRET), &hex(SERVER_SECRET));
    let mut keys = event(Kind::Keys, Call::None, &memory);
    keys.new_conn = true;
    keys.wait_ns = Some(5_000);
    let plain = keyed.keys(&keys).expect("the request");
    assert_eq!(plain.plain.head, fifty());
    assert_eq!((plain.carry.new_conn, plain.carry.wait_ns), (true, Some(5_000)));
    assert_eq!(plain.event(&keys).call, Call::TlsRead);
    let plain = keyed.data(&event(Kind::Data, Call::Write, &hex(SERVER_DATA))).expect("response");
    assert_eq!((plain.plain.len, plain.carry.new_conn), (50, false));
}

#[test]
fn a_handshake_s_finished_costs_no_key_derivations() {
    // The kernel handed over TLS 1.3 secrets; the handshake read the client's Finished (under
    // handshake keys), then the request came: one suite's keys are derived, TLS 1.2's never.
    let mut keyed = Keyed::default();
    let handshake_keys = TrafficKeys::new(Suite::Aes128Gcm, &[9; 32]).expect("keys");
    let mut early = vec![20, 3, 3, 0, 1, 1];
    // A Finished: handshake type 20, 32 bytes of verify data, inner content type 22.
    let finished: Vec<u8> = [20, 0, 0, 32].into_iter().chain([7; 32]).chain([22]).collect();
    early.extend(handshake_keys.seal(0, &finished));
    assert!(keyed.data(&event(Kind::Data, Call::Read, &early)).is_none());
    let mut secrets = vec![0u8; observer_common::KEYS_SECRETS_LEN];
    secrets[..32].copy_from_slice(&hex(CLIENT_SECRET));
    secrets[48..80].copy_from_slice(&hex(SERVER_SECRET));
    secrets[96..].fill(3); // a resumption secret and randoms: TLS 1.2 keys could be made
    assert!(keyed.keys(&event(Kind::Keys, Call::None, &secrets)).is_none());
    let request = hex(CLIENT_DATA);
    assert!(keyed.data(&event(Kind::Data, Call::Read, &request[..5])).is_none(), "a header alone");
    assert_eq!(keyed.sessions[&42].derived.counts(), (0, 0), "the Finished alone is not tried");
    let plain = keyed.data(&event(Kind::Data, Call::Read, &request[5..])).expect("the request");
    assert_eq!(plain.plain.head, fifty());
    assert_eq!(keyed.sessions[&42].derived.counts(), (1, 0));
    let plain = keyed.data(&event(Kind::Data, Call::Write, &hex(SERVER_DATA))).expect("response");
    assert_eq!(plain.plain.len, 50);
    assert_eq!(keyed.sessions[&42].derived.counts(), (0, 0), "dropped once both streams are made");
}

#[test]
fn a_session_whose_secrets_are_not_found_is_lost_once() {
    let mut keyed = Keyed::default();
    assert!(keyed.keys(&event(Kind::Keys, Call::None, &memory(&[1; 32], &[2; 32]))).is_none());
    let request = hex(CLIENT_DATA);
    assert!(keyed.data(&event(Kind::Data, Call::Read, &request)).is_none());
    assert!(keyed.data(&event(Kind::Data, Call::Read, &request)).is_none());
    assert_eq!(keyed.lost.get(&LostReason::NotFound), Some(&1));
    // Without keys: what is read is kept for them (the handshake's reads), what is written
    // is lost.
    assert!(keyed.data(&Event { conn: 9, ..event(Kind::Data, Call::Read, &request) }).is_none());
    assert_eq!(keyed.lost.get(&LostReason::NoKeys), None);
    assert!(keyed.data(&Event { conn: 9, ..event(Kind::Data, Call::Write, &request) }).is_none());
    assert_eq!(keyed.lost.get(&LostReason::NoKeys), Some(&1));
}

#[test]
fn http2_is_given_up_and_its_process_handed_back_to_per_call_uprobes() {
    let mut keyed = Keyed::default();
    let memory = memory(&hex(CLIENT_SECRET), &hex(SERVER_SECRET));
    assert!(keyed.keys(&event(Kind::Keys, Call::None, &memory)).is_none());
    let mut inner = observer_common::H2_PREFACE.to_vec();
    inner.push(23);
    let preface = client_keys().seal(0, &inner);
    assert!(keyed.data(&event(Kind::Data, Call::Read, &preface)).is_none());
    assert_eq!(keyed.take_fall_backs(), vec![(7, LostReason::Http2)]);
    assert_eq!(keyed.take_counts().1, vec![(LostReason::Http2, 1)]);
}

#[test]
fn an_http2_first_record_copied_in_parts_is_walked_whole() {
    let mut keyed = Keyed::default();
    let mut secrets = vec![0u8; observer_common::KEYS_SECRETS_LEN];
    secrets[..32].copy_from_slice(&hex(CLIENT_SECRET));
    secrets[48..80].copy_from_slice(&hex(SERVER_SECRET));
    assert!(keyed.keys(&Event { frames: true, ..event(Kind::Keys, Call::None, &secrets) }).is_none());
    // The preface, SETTINGS, then a 12,000-byte DATA frame: one record longer than the
    // kernel's 8 KiB copies, so it comes in two numbered parts.
    let mut inner = observer_common::H2_PREFACE.to_vec();
    inner.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    inner.extend([0, 0x2e, 0xe0, 0, 1, 0, 0, 0, 1]);
    inner.extend(vec![b'x'; 12_000]);
    let plain_len = inner.len();
    inner.push(23);
    let record = client_keys().seal(0, &inner);
    let (first, rest) = record.split_at(observer_common::HEAD_LEN);
    let part = |head, seq| Event { frames: true, cipher: true, seq, ..event(Kind::Data, Call::Read, head) };
    assert!(keyed.data(&part(first, 0)).is_none(), "the record is not whole yet");
    let plain = keyed.data(&part(rest, 1)).expect("the record's plaintext");
    assert_eq!((plain.plain.len, plain.frames), (plain_len, Some(0)));
    // The frame walk keeps the preface and frame headers, not the DATA payload.
    assert!(plain.plain.head.starts_with(observer_common::H2_PREFACE));
    assert_eq!(plain.plain.head.len(), observer_common::H2_PREFACE.len() + 18);
    assert!(keyed.take_counts().1.is_empty(), "nothing lost");
}

#[test]
fn a_client_s_session_opens_what_it_writes_and_what_it_reads() {
    let mut keyed = Keyed::default();
    let mut secrets = vec![0u8; observer_common::KEYS_SECRETS_LEN];
    secrets[..32].copy_from_slice(&hex(CLIENT_SECRET));
    secrets[48..80].copy_from_slice(&hex(SERVER_SECRET));
    fn client(e: Event<'_>) -> Event<'_> {
        Event { role: Role::Client, ..e }
    }
    assert!(keyed.keys(&client(event(Kind::Keys, Call::None, &secrets))).is_none());
    // It writes the client's records; it reads the server's, tickets first.
    let request = hex(CLIENT_DATA);
    let plain = keyed.data(&client(event(Kind::Data, Call::Write, &request))).expect("its request");
    assert_eq!((plain.plain.head.as_slice(), plain.direction), (&fifty()[..], Direction::Out));
    let mut response = hex(TICKET);
    response.extend(hex(SERVER_DATA));
    let plain = keyed.data(&client(event(Kind::Data, Call::Read, &response))).expect("its response");
    assert_eq!((plain.plain.head.as_slice(), plain.direction), (&fifty()[..], Direction::In));
    // A client's first records teach nothing of the process's layout (a server's).
    assert_eq!(keyed.layout(7), Layout::default());
    assert!(keyed.take_learned().is_empty());
}

#[test]
fn a_padded_record_after_unpadded_ones_is_still_application_data() {
    for suite in Suite::ALL {
        let keys = TrafficKeys::new(suite, &vec![5u8; suite.secret_len()]).expect("keys");
        let mut wire = keys.seal(0, b"GET / HTTP/1.1\r\n\r\n\x17");
        // Application data, then its content type, then 16 bytes of padding (RFC 8446 §5.4).
        let mut padded = b"GET /p HTTP/1.1\r\n\r\n\x17".to_vec();
        padded.extend([0; 16]);
        wire.extend(keys.seal(1, &padded));
        let mut stream = Stream::new(keys, 0);
        let plain = stream.call(wire.len(), &wire, &[]).expect("records");
        assert_eq!(plain.head, b"GET / HTTP/1.1\r\n\r\nGET /p HTTP/1.1\r\n\r\n", "{suite:?}");
        assert_eq!(stream.checked, 2, "the padded record's tag checked");
    }
}
