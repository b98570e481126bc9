# Varnish as the peers harness runs it (benches/src/bin/bench_peers.rs fills the slots in double braces).
# Varnish has no TLS to backends: its backend is NGINX's plain-HTTP pass-through listener, used
# only to fill the cache before the measured rounds. No varnishncsa (Varnish logs to shared
# memory; a separate process would write the access log).
vcl 4.1;

backend nginx {
    .host = "127.0.0.1";
    .port = "{{backend_port}}";
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
