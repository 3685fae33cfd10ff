# A Varnish edge in front of the cluster's load balancer, purged by logwarden when the nodes
# hold a changed copy (README "A CDN in front"). Each agent runs with
#   --downstream http://EDGE:6081 --downstream-header 'X-Purge-Token: <token>'
# and --downstream-method PURGE (the default: the object goes) or BAN (every variant of it).
# tests/test_edge.py loads this file, with loopback addresses, in front of HAProxy and three
# NGINX nodes built from examples/nginx.conf.
vcl 4.1;

backend cluster {
    .host = "10.0.0.100";   # the load balancer in front of the NGINX nodes
    .port = "80";
}

# The logwarden agents (each node's address): nobody else may purge.
acl logwarden {
    "10.0.0.1";
    "10.0.0.2";
    "10.0.0.3";
}

sub vcl_recv {
    if (req.method == "PURGE" || req.method == "BAN") {
        if (client.ip !~ logwarden || req.http.X-Purge-Token != "CHANGE-ME-PURGE-TOKEN") {
            return (synth(403, "Forbidden"));
        }
        if (req.method == "BAN") {  # on the copies' own headers: the ban lurker can drop them
            ban("obj.http.X-Edge-Host == " + req.http.host + " && obj.http.X-Edge-Url == " +
                req.url);
            return (synth(200, "Banned"));
        }
        return (purge);  # the key is Host + URL (builtin vcl_hash), as logwarden sends them
    }
}

sub vcl_backend_response {
    set beresp.http.X-Edge-Host = bereq.http.host;
    set beresp.http.X-Edge-Url = bereq.url;
    # The edge's TTL is the nodes' Cache-Control (max-age / s-maxage). A longer one delays
    # noticing a change: the nodes are asked only when the edge misses (README).
    # set beresp.ttl = 1h;  # EDGE TTL
}

sub vcl_deliver {
    unset resp.http.X-Edge-Host;
    unset resp.http.X-Edge-Url;
    if (obj.hits > 0) {
        set resp.http.X-Edge-Cache = "HIT";
    } else {
        set resp.http.X-Edge-Cache = "MISS";
    }
}
