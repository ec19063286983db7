"""A scriptable OAuth2 token endpoint (HTTPS, RFC 6749 and RFC 8628) and an aiosmtpd
smarthost that takes XOAUTH2 and OAUTHBEARER with only the tokens the endpoint issued
and that have not expired. Standard library and aiosmtpd only; loopback only."""
import base64
import http.server
import json
import ssl
import threading
import time
import urllib.parse

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult


class TokenEndpoint:
    """`mode`: "ok", "invalid_grant", "garbage" (200 with HTML), "503", or "slow N"
    (answers after N seconds). `stop()` and `start()` take it down and up again on
    the same port."""

    def __init__(self, cert, key, port, lifetime=3600, rotate=False, token_size=0):
        self.cert, self.key, self.port = cert, key, port
        self.lifetime, self.rotate, self.token_size = lifetime, rotate, token_size
        self.mode = "ok"
        self.client_id = "relay-app"
        self.client_secret = "app-s3cret-value"
        self.refresh_tokens = {"rt-initial-0"}
        self.issued = {}  # access token -> expiry (time.time())
        self.requests = []  # (path, form) per request
        self.device_polls = 0
        self.count = 0
        self.lock = threading.Lock()
        self.server = None

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}/tenant/oauth2/v2.0/token"

    def start(self):
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(n).decode()).items()}
                status, body = endpoint.answer(self.path, form)
                if body is None:
                    self.close_connection = True
                    return
                self.send_response(status)
                # Chunked for the token path, a length for the device path: both readers.
                self.send_header("Content-Type", "application/json")
                if self.path.endswith("/token"):
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = len(body) // 2
                    for part in (body[:half], body[half:]):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        srv.allow_reuse_address = True
        srv.daemon_threads = True
        srv.server_bind()
        srv.server_activate()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        self.server = srv
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def issue(self, refresh=None):
        with self.lock:
            self.count += 1
            token = f"at-{self.count}-" + "x" * self.token_size
            self.issued[token] = time.time() + self.lifetime
        reply = {"token_type": "Bearer", "expires_in": self.lifetime, "ext_expires_in": self.lifetime,
                 "access_token": token}
        if refresh:
            reply["refresh_token"] = refresh
        return reply

    def valid(self, token):
        return self.issued.get(token, 0) > time.time()

    def revoke_access_tokens(self):
        self.issued.clear()

    def error(self, status, error, description="error for the test"):
        return status, json.dumps({"error": error, "error_description": description,
                                   "error_codes": [70000]}).encode()

    def answer(self, path, form):
        self.requests.append((path, form))
        mode = self.mode
        if mode.startswith("slow"):
            time.sleep(float(mode.split()[1]))
        elif mode == "garbage":
            return 200, b"<html><body>Sign in to continue</body></html>"
        elif mode == "503":
            return 503, b"Service Unavailable"
        if form.get("client_id") != self.client_id:
            return self.error(400, "invalid_client", "AADSTS700016: Application not found.")
        if path.endswith("/devicecode"):
            return 200, json.dumps({"device_code": "dc-secret-1", "user_code": "ABCD-EFGH",
                                    "verification_uri": "https://microsoft.com/devicelogin",
                                    "expires_in": 60, "interval": 1}).encode()
        grant = form.get("grant_type")
        if mode == "invalid_grant":
            return self.error(400, "invalid_grant", "AADSTS70008: The refresh token has expired.")
        if grant == "client_credentials":
            if form.get("client_secret") != self.client_secret:
                return self.error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
            if form.get("scope") != "https://outlook.office365.com/.default":
                return self.error(400, "invalid_scope")
            return 200, json.dumps(self.issue()).encode()
        if grant == "refresh_token":
            old = form.get("refresh_token")
            if old not in self.refresh_tokens:
                return self.error(400, "invalid_grant", "AADSTS700082: The refresh token was revoked.")
            new = None
            if self.rotate:
                new = f"rt-rotated-{self.count + 1}"
                # Strict rotation: the old one is gone once the new one is issued.
                self.refresh_tokens = {new}
            return 200, json.dumps(self.issue(refresh=new)).encode()
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            if form.get("device_code") != "dc-secret-1":
                return self.error(400, "invalid_grant")
            self.device_polls += 1
            if self.device_polls < 3:
                return self.error(400, "authorization_pending")
            self.refresh_tokens.add("rt-from-device")
            return 200, json.dumps(self.issue(refresh="rt-from-device")).encode()
        return self.error(400, "unsupported_grant_type")


class OAuthSmarthost:
    """The aiosmtpd handler: XOAUTH2 and OAUTHBEARER against `endpoint`'s tokens."""

    def __init__(self, endpoint, user="alerts@example.net"):
        self.endpoint, self.user = endpoint, user
        self.messages = []
        self.logins = []  # (mechanism, token, initial_response_on_the_line, ok)

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK oauth smarthost"

    async def _bearer(self, server, args, mechanism, parse):
        on_line = len(args) == 2
        blob = base64.b64decode(args[1]) if on_line else await server.challenge_auth("")
        if not isinstance(blob, bytes):
            return AuthResult(success=False, handled=True)
        user, token = parse(blob)
        ok = user == self.user and self.endpoint.valid(token)
        self.logins.append((mechanism, token, on_line, ok))
        if ok:
            return AuthResult(success=True)
        # RFC 7628 §3.2.2 / Google: an error challenge, the client's answer, then 535.
        await server.challenge_auth(json.dumps({"status": "invalid_token", "schemes": "bearer"}))
        return AuthResult(success=False, handled=False, message="535 5.7.8 Username and Password not accepted")

    async def auth_XOAUTH2(self, server, args):
        def parse(blob):
            fields = dict(f.split("=", 1) for f in blob.decode().split("\x01") if "=" in f)
            return fields.get("user"), fields.get("auth", "").removeprefix("Bearer ")
        return await self._bearer(server, args, "XOAUTH2", parse)

    async def auth_OAUTHBEARER(self, server, args):
        def parse(blob):
            gs2, *kvs = blob.decode().split("\x01")
            user = next((p[2:] for p in gs2.split(",") if p.startswith("a=")), None)
            fields = dict(kv.split("=", 1) for kv in kvs if "=" in kv)
            return user, fields.get("auth", "").removeprefix("Bearer ")
        return await self._bearer(server, args, "OAUTHBEARER", parse)


class LongLineSMTP(SMTP):
    # RFC 4954 §4: a client's AUTH response line may be 12,288 octets.
    line_length_limit = 16384


class OAuthController(Controller):
    def factory(self):
        return LongLineSMTP(self.handler, **self.SMTP_kwargs)


def start_smarthost(endpoint, context, port, implicit=False):
    handler = OAuthSmarthost(endpoint)
    kw = dict(hostname="127.0.0.1", port=port, decode_data=False, auth_exclude_mechanism=["PLAIN", "LOGIN"])
    if implicit:
        kw.update(ssl_context=context, auth_require_tls=False)
    else:
        kw.update(tls_context=context, require_starttls=True, auth_require_tls=True)
    ctl = OAuthController(handler, **kw)
    ctl.start()
    return ctl, handler
