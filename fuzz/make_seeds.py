#!/usr/bin/env python3
"""Writes fuzz/seeds/TARGET/* from tests/fixtures, tests' embedded configs and
hand-made edge cases. Run from the repository root: python3 fuzz/make_seeds.py"""
import hashlib, hmac, json, os, re, shutil, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
FIX = os.path.join(ROOT, "tests", "fixtures")

def read(*p):
    with open(os.path.join(ROOT, *p), "rb") as f:
        return f.read()

def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

shutil.rmtree(SEEDS, ignore_errors=True)

vector = json.loads(read("tests/fixtures/nowpayments/vector-canonical-form.json"))
np_bodies = {
    "payment": read("tests/fixtures/nowpayments/docs-payment-ipn.json"),
    "payout": read("tests/fixtures/nowpayments/docs-payout-ipn.json"),
    "custodial": read("tests/fixtures/nowpayments/docs-custodial-recurring-ipn.json"),
    "vector-raw": vector["raw_body"].encode(),
    # Seen in the wild: epoch-millisecond updated_at, nested fee, tiny floats.
    "epoch-ms": b'{"actually_paid":0.00656612,"fee":{"currency":"eth","depositFee":0.000002,"serviceFee":0},'
                b'"payment_id":5077125051,"payment_status":"finished","pay_currency":"eth","updated_at":1765249461097}',
}
nova_deposit = read("tests/fixtures/nova/deposit-confirmed.json")

# --- JSON (canonical_parse, canonical_differential) ---------------------------
json_cases = {
    "fixture-payment.json": np_bodies["payment"],
    "fixture-payout.json": np_bodies["payout"],
    "fixture-custodial.json": np_bodies["custodial"],
    "fixture-vector.json": read("tests/fixtures/nowpayments/vector-canonical-form.json"),
    "fixture-vector-raw.json": np_bodies["vector-raw"],
    "fixture-nova.json": nova_deposit,
    "epoch-ms.json": np_bodies["epoch-ms"],
    "numbers.json": b'[0,-0,-0.0e5,1.50,1e2,1E+2,1e-7,0.000002,5e-324,2.5e-324,1e21,1.5e21,1e400,-1e400,'
                    b'12345678901234567890,123456789012345678901234567890,9007199254740993,'
                    b'0.1000000000000000055511151231257827021181583404541015625,1.7976931348623157e308,'
                    b'1.7976931348623158e308,1.7976931348623159e308,4.9e-324,2.2250738585072011e-308]',
    "keys.json": '{"b":1,"a":2,"10":3,"2":4,"01":5,"4294967295":6,"4294967294":7,"A":8,"":9,'
                 '"\uff61":10,"\U0001F600":11,"-1":12,"1.0":13}'.encode(),
    "proto.json": b'{"__proto__":{"x":1},"a":[{"__proto__":2,"b":3}],"\\u005f_proto__x":4}',
    "proto-escaped.json": b'{"\\u005f\\u005fproto\\u005f\\u005f":1,"k":null}',
    "strings.json": b'["\\/","\\u00e9\xc3\xa9","\\u0001\\u001f\\b\\t\\f\\n\\r","\xe2\x80\xa8","\\"\\\\",'
                    b'"\\ud83d\\ude00","\\uD83D\\uDE00","\\u0000","\x7f","\xf4\x8f\xbf\xbf"]',
    "nested.json": ("[" * 64 + "]" * 64).encode(),
    "too-deep.json": ("[" * 65 + "]" * 65).encode(),
    "deep-objects.json": ('{"a":' * 63 + "1" + "}" * 63).encode(),
    "dup-keys.json": b'{"a":1,"\\u0061":2}',
    "many-keys.json": ("{" + ",".join('"k%d":%d' % (i, i) for i in range(20)) + "}").encode(),
    "whitespace.json": b' \t\r\n{ "a" : [ 1 , 2 ] , "b" : { } , "c" : [ ] } \n',
    "scalars-true.json": b"true",
    "scalar-string.json": b'"x"',
    "scalar-neg.json": b"-12.5e-3",
    "lone-surrogate.json": b'"\\ud800"',
    "bad-utf8.json": b'{"a":"\xff\xfe"}',
    "bom.json": b'\xef\xbb\xbf{}',
    "trailing.json": b'{} {}',
    "truncated.json": np_bodies["payment"][: len(np_bodies["payment"]) // 2],
}
for t in ("canonical_parse", "canonical_differential"):
    for name, data in json_cases.items():
        write(t, name, data)

# --- nowpayments: header line, then body --------------------------------------
def np_sig(secret, msg):
    return hmac.new(secret, msg, hashlib.sha512).hexdigest().encode()

write("nowpayments", "vector", vector["x_nowpayments_sig"].encode() + b"\n" + np_bodies["vector-raw"])
write("nowpayments", "vector-upper", vector["x_nowpayments_sig"].upper().encode() + b"\n" + np_bodies["vector-raw"])
for name, body in np_bodies.items():
    write("nowpayments", name + "-rawsig", np_sig(b"ipn-secret-for-test", body) + b"\n" + body)
    write("nowpayments", name + "-nohdr", body)
write("nowpayments", "short-sig", b"abc\n" + np_bodies["payment"])
write("nowpayments", "zero-sig", b"0" * 128 + b"\n" + np_bodies["payment"][:40])
write("nowpayments", "array-body", b"\n" + b'[{"payment_id":1,"payment_status":"waiting"}]')
write("nowpayments", "payout-minimal", b"\n" + b'{"id":7,"status":"FINISHED","address":"a","amount":1e400}')
write("nowpayments", "payment-types", b"\n" + b'{"payment_id":[1],"payment_status":"FINISHED","actually_paid":-0,'
      b'"created_at":"2025-12-09T05:04:21.0979+02:00","updated_at":null,"items":[{"b":1,"a":2}]}')
write("nowpayments", "extreme-times", b"\n" + b'{"payment_id":"p","payment_status":"waiting",'
      b'"updated_at":"9999-12-31T23:59:59-01:00"}')
write("nowpayments", "extreme-epoch", b"\n" + b'{"payment_id":"p","payment_status":"waiting",'
      b'"updated_at":253402300799000}')

# --- nova: flags byte, header line, then body ---------------------------------
def nova_sig(msg):
    return hmac.new(b"nova-fuzz-secret", msg, hashlib.sha256).hexdigest().encode()

compact = json.dumps(json.loads(nova_deposit), separators=(",", ":")).encode()
write("nova", "deposit-header", b"\x00" + nova_sig(nova_deposit) + b"\n" + nova_deposit)
write("nova", "deposit-prefixed", b"\x00sha256=" + nova_sig(compact) + b"\n" + compact)
write("nova", "deposit-notolerance", b"\x01" + nova_sig(compact).upper() + b"\n" + compact)
body_sig = compact[:-1] + b',"signature":"' + nova_sig(compact) + b'"}'
write("nova", "deposit-bodysig", b"\x00" + body_sig)
write("nova", "deposit-bodysig-canonical", b"\x04" + body_sig)
write("nova", "deposit-bodysig-stringify", b"\x02" + compact.replace(b'"amount":100', b'"amount":1e2'))
write("nova", "bad-header", b"\x00sha256=abc\n" + compact)
write("nova", "stale", b"\xf8" + nova_sig(compact) + b"\n" + compact)
for i, (ev, data, ts) in enumerate([
    ("payout.completed", '{"id":12,"amount":-0.0,"orderId":null}', "2025-03-06T01:05:00+01:00"),
    ("Weird", '{"id":"x","userId":1e400}', "2025-03-06T00:05:00.123456789Z"),
    ("a.b.c", '{"id":[1]}', "not a time"),
    ("deposit.confirmed", '{"id":"d"}', "9999-12-31T23:59:59-23:59"),
    ("deposit.confirmed", '{"id":"d"}', "0000-01-01T00:00:00+23:59"),
    ("deposit.confirmed", '{"id":"d"}', "2025-03-06T00:05:60Z"),
]):
    write("nova", "case%d" % i, b"\x01\n" + ('{"event":"%s","data":%s,"timestamp":"%s"}' % (ev, data, ts)).encode())
write("nova", "no-object", b"\x00\n[1,2]")
write("nova", "signature-not-string", b"\x00" + b'{"event":"x.y","data":{"id":1},"timestamp":"2025-03-06T00:05:00Z","signature":1}')

# --- config ---------------------------------------------------------------------
write("config", "example.toml", read("config.example.toml"))
config_rs = read("src/config.rs").decode()
base = re.search(r'const BASE: &str = r#"(.*?)"#;', config_rs, re.S).group(1)
ep = re.search(r'const EP: &str = "(.*?)";', config_rs).group(1).encode().decode("unicode_escape")
write("config", "base.toml", base)
write("config", "base-ep.toml", base + ep)
write("config", "base-nova-defaulted.toml", base + '\n[[sources]]\nname = "nova"\nkind = "nova"\nsecrets = ["${IPN_RELAY_TEST_SURELY_UNSET:-dev}"]\ntimestamp_tolerance = "0s"\n')
write("config", "durations.toml", base + '\n[delivery]\ninitial_backoff = "1h 30m"\nmax_backoff = "2d"\nvisibility_timeout = "90s"\n')
write("config", "redis.toml", base + '\n[store]\nkind = "redis"\nurl = "redis://127.0.0.1:6379/0"\nprefix = "p"\ndedupe_ttl = "1h"\n')
write("config", "proxies.toml", base.replace("[server]\n", '[server]\ntrusted_proxies = ["0.0.0.0/0", "10.1.2.3", "2001:db8::/33"]\n'))
write("config", "ep-rotation.toml", base + ep + 'previous_secret = "whsec_c2Vjb25kLWVuZHBvaW50LXNlY3JldC1rZXktMTIz"\nevents = ["deposit.*", "payout.failed"]\nsources = ["nowpayments"]\nrate_limit = { per_second = 5 }\ntimeout = "59500ms"\nmax_in_flight = 3\n')
write("config", "syntax-error.toml", '[server]\nlisten = "127.0.0.1:1"\nadmin_listen = oops\n')
write("config", "huge-durations.toml", base + ep + 'timeout = "18446744073709551615s 999ms"\n\n[delivery]\nvisibility_timeout = "18446744073709551615s"\nmax_backoff = "584942417355y"\n')
write("config", "huge-tolerance.toml", base + '\n[store]\ndedupe_ttl = "18446744073709551615s"\n\n[[sources]]\nname = "nova"\nkind = "nova"\nsecrets = ["x"]\ntimestamp_tolerance = "9223372036854775808s"\n')
write("config", "odd-numbers.toml", base.replace("[server]\n", "[server]\nmax_body_bytes = 18446744073709551615\nmax_connections = -1\n") + '\n[delivery]\nmultiplier = nan\njitter = -0.0\nmax_attempts = 4294967296\n')
common = read("tests/common/mod.rs").decode()
base_cfg = re.search(r'pub fn base_config.*?r#"(.*?)"#', common, re.S).group(1)
base_cfg = base_cfg.replace("{}", "/tmp/relay.redb").replace("{NP_SECRET}", "np-test-secret").replace("{NOVA_SECRET}", "nova-test-secret")
write("config", "tests-common.toml", base_cfg + '\n[[endpoints]]\nname = "backend"\nurl = "http://127.0.0.1:9/hooks"\nsecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\nevents = ["deposit.*"]\n')
bl = re.search(r'pub fn backend_and_ledger.*?format!\(\s*"(.*?)"\s*\)', common, re.S).group(1)
bl = bl.replace('\\"', '"').replace("{backend}", "http://127.0.0.1:1/a").replace("{ledger}", "https://user:pw@127.0.0.1:2/b").replace("{ENDPOINT_SECRET}", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
write("config", "tests-backend-ledger.toml", base_cfg + bl)

# --- retry_after ------------------------------------------------------------------
for i, s in enumerate([
    "120", " 0 ", "18446744073709551615", "18446744073709551616", "-1", "+5", "1.5", "soon", "",
    "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 +0000", "Mon, 01 Jan 1900 00:00:00 -2359",
    "Sat, 01 Jan 2100 00:00:00 +2359", "Thu, 01 Jan 70 00:00:00 UT", "31 Dec 9999 23:59:60 -0000",
]):
    write("retry_after", "case%02d" % i, s)

# --- forwarded_for: selector, 16 address bytes, header lines ----------------------
addr = bytes([203, 0, 113, 9] + [0x20, 0x01, 0x0d, 0xb8] + [0] * 7 + [1])
for i, (sel, lines) in enumerate([
    (2, b"203.0.113.9"),
    (2, b"198.51.100.1, 10.0.0.2, 10.0.0.3"),
    (3, b"[2001:db8::7]:443, 203.0.113.9:4711"),
    (4, b"::ffff:10.1.2.3, 2001:db8::1\n198.51.100.7"),
    (5, b"garbage, 10.0.0.1\n\xff\xfe, 127.0.0.1"),
    (2, b"\x80not-ascii, 192.0.2.1"),
    (2, b"[2001:db8::1], , 10.0.0.9"),
    (0, b"1.2.3.4"),
    (1, b"1.2.3.4"),
    (2, b"fe80::1%eth0, [::1]:0, 0.0.0.0:65535"),
    (5, b"unknown"),
    (2, b""),
]):
    write("forwarded_for", "case%02d" % i, bytes([sel]) + addr + lines)

for t in sorted(os.listdir(SEEDS)):
    files = os.listdir(os.path.join(SEEDS, t))
    print(t, len(files), sum(os.path.getsize(os.path.join(SEEDS, t, f)) for f in files), "bytes")
