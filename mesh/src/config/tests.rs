use std::time::Duration;

use super::*;

fn write(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "starling-config-{:016x}.toml",
        starling_core::random_u64()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn flags_beat_the_file_which_beats_the_defaults() {
    let path = write(
        "name = \"from-file\"\nlisten = \"127.0.0.1:9000\"\nio_backend = \"epoll\"\nio_threads = 3\n[limits]\nconnections_max = 5\n[nats]\nlisten = \"127.0.0.1:4333\"\n",
    );
    let overrides = Overrides {
        name: Some("from-flag".into()),
        ..Overrides::default()
    };
    let config = NodeConfig::load(Some(&path), overrides).unwrap();
    assert_eq!(config.name, "from-flag");
    assert_eq!(config.listen.as_deref(), Some("127.0.0.1:9000"));
    assert_eq!(config.io_backend, BackendChoice::Epoll);
    assert_eq!(config.io_threads, 3);
    assert_eq!(config.http.as_deref(), Some(DEFAULT_HTTP));
    assert_eq!(config.nats.as_deref(), Some("127.0.0.1:4333"));
    assert_eq!(config.limits.connections_max, 5);
    assert_eq!(
        config.limits.payload_bytes_max,
        1 << 20,
        "unset limits keep their defaults"
    );
    std::fs::remove_file(path).unwrap();
}

#[test]
fn empty_values_turn_listeners_off() {
    let overrides = Overrides {
        http: Some(String::new()),
        listen: Some(String::new()),
        ..Overrides::default()
    };
    let config = NodeConfig::load(None, overrides).unwrap();
    assert_eq!((config.listen, config.http), (None, None));
    let overrides = Overrides {
        nats_listen: Some(String::new()),
        ..Overrides::default()
    };
    assert_eq!(NodeConfig::load(None, overrides).unwrap().nats, None);
    let defaults = NodeConfig::load(None, Overrides::default()).unwrap();
    assert_eq!(defaults.nats.as_deref(), Some("127.0.0.1:4222"));
}

#[test]
fn mistakes_are_reported_with_their_place() {
    let path = write("nmae = \"typo\"\n");
    let error = NodeConfig::load(Some(&path), Overrides::default()).unwrap_err();
    assert!(error.to_string().contains("nmae"), "{error}");
    std::fs::remove_file(path).unwrap();
    let overrides = Overrides {
        io_backend: Some("kqueue".into()),
        ..Overrides::default()
    };
    let error = NodeConfig::load(None, overrides).unwrap_err();
    assert!(
        error.to_string().contains("auto, uring or epoll"),
        "{error}"
    );
    let missing = NodeConfig::load(
        Some(Path::new("/nonexistent/starling.toml")),
        Overrides::default(),
    );
    assert!(matches!(missing, Err(ConfigError::Read { .. })));
}

#[test]
fn seeds_and_the_advertised_address_are_host_and_port() {
    let cluster = |seeds: &[&str], listen: &str, advertise: Option<&str>| {
        NodeConfig::load(
            None,
            Overrides {
                seeds: seeds.iter().map(|s| s.to_string()).collect(),
                cluster_listen: Some(listen.into()),
                cluster_advertise: advertise.map(str::to_owned),
                insecure_dev_tls: true,
                ..Overrides::default()
            },
        )
    };
    let good = [
        "node-a:7401",
        "starling-0.starling.default.svc:7401",
        "10.0.0.5:7401",
        "[::1]:7401",
    ];
    let config = cluster(&good, "0.0.0.0:7401", Some("node-b:7401")).unwrap();
    let config = config.cluster.unwrap();
    assert_eq!(
        config.seeds, good,
        "names are kept, to be resolved at each dial"
    );
    assert_eq!(config.advertise.as_deref(), Some("node-b:7401"));
    let config = cluster(&good, "0.0.0.0:7401", Some(good[1])).unwrap();
    assert_eq!(
        config.cluster.unwrap().seeds,
        [good[0], good[2], good[3]],
        "a node is not its own seed"
    );
    for (seed, why) in [
        ("node-a", "no port"),
        ("node-a:http", "port"),
        ("node-a:0", "port"),
        (":7401", "no host"),
        ("::1:7401", "brackets"),
        ("[node-a]:7401", "IPv6"),
        ("node a:7401", "neither a name"),
    ] {
        let error = cluster(&[seed], "127.0.0.1:0", None)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(seed) && error.contains(why),
            "{seed}: {error}"
        );
    }
    let error = cluster(&[], "0.0.0.0:7401", None).unwrap_err().to_string();
    assert!(error.contains("--cluster-advertise"), "{error}");
    let error = cluster(&[], "127.0.0.1:7401", Some("node-b"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("--cluster-advertise 'node-b'"), "{error}");
}

#[test]
fn users_are_checked_at_load_and_their_mistakes_named() {
    let hash = starling_transport::auth::hash_password("pw");
    let path = write(&format!(
        "[[users]]\nname = \"alice\"\npassword = \"{hash}\"\npublish = [\"orders.>\"]\n\
         subscribe_deny = [\"orders.us.>\"]\n[[users]]\nname = \"bot\"\ntoken = \"t\"\n"
    ));
    let config = NodeConfig::load(Some(&path), Overrides::default()).unwrap();
    std::fs::remove_file(path).unwrap();
    assert_eq!(config.users.len(), 2);
    let alice = &config.users[0];
    assert_eq!(alice.secret, UserSecret::PasswordHash(hash.clone()));
    assert_eq!(
        alice.permissions.publish.allow,
        Some(vec!["orders.>".to_owned()])
    );
    assert_eq!(
        alice.permissions.subscribe.allow, None,
        "absent: everything"
    );
    assert_eq!(alice.permissions.subscribe.deny, ["orders.us.>"]);
    assert_eq!(config.users[1].secret, UserSecret::Token("t".into()));
    for (table, says) in [
        (
            format!("name = \"a\"\npassword = \"{hash}\"\ntoken = \"t\""),
            "either",
        ),
        ("name = \"a\"".to_owned(), "either"),
        ("name = \"a\"\ntoken = \"\"".to_owned(), "either"),
        (
            "name = \"a\"\npassword = \"plain\"".to_owned(),
            "starling passwd",
        ),
        (
            "name = \"a\"\ntoken = \"t\"\npublish = [\"a..b\"]".to_owned(),
            "'a..b'",
        ),
        (
            "name = \"\"\ntoken = \"t\"".to_owned(),
            "empty or given twice",
        ),
        (
            "name = \"a\"\ntoken = \"t\"\n[[users]]\nname = \"a\"\ntoken = \"u\"".to_owned(),
            "given twice",
        ),
    ] {
        let path = write(&format!("[[users]]\n{table}\n"));
        let error = NodeConfig::load(Some(&path), Overrides::default()).unwrap_err();
        std::fs::remove_file(path).unwrap();
        assert!(matches!(error, ConfigError::Users(_)), "{table}: {error}");
        assert!(error.to_string().contains(says), "{table}: {error}");
    }
}

#[test]
fn the_probe_interval_sets_membership_timing_and_is_bounded() {
    let path = write(
        "[cluster]\nlisten = \"127.0.0.1:0\"\ninsecure_dev_tls = true\nprobe_interval_ms = 200\n",
    );
    let config = NodeConfig::load(Some(&path), Overrides::default()).unwrap();
    let membership = config.cluster.unwrap().membership;
    let lan = crate::cluster::membership::MembershipConfig::lan();
    assert_eq!(membership.probe_period, Duration::from_millis(200));
    assert_eq!(membership.probe_rtt, lan.probe_rtt / 5);
    assert_eq!(membership.gossip_interval, lan.gossip_interval / 5);
    assert_eq!(
        membership.forget_dead_after, lan.forget_dead_after,
        "the dead are remembered as long"
    );
    std::fs::remove_file(path).unwrap();

    let path = write(
        "[cluster]\nlisten = \"127.0.0.1:0\"\ninsecure_dev_tls = true\nprobe_interval_ms = 1\n",
    );
    let error = NodeConfig::load(Some(&path), Overrides::default()).unwrap_err();
    assert!(error.to_string().contains("probe_interval_ms"), "{error}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn client_tls_comes_from_the_file_or_the_flags_and_is_whole() {
    let path = write(
        "client_tls_cert = \"file.pem\"\nclient_tls_key = \"file-key.pem\"\nclient_tls_ca = \"clients.pem\"\n",
    );
    let overrides = Overrides {
        client_tls_cert: Some("flag.pem".into()),
        ..Overrides::default()
    };
    let config = NodeConfig::load(Some(&path), overrides).unwrap();
    assert_eq!(
        config.client_tls,
        Some(ClientTlsFiles {
            cert: "flag.pem".into(),
            key: "file-key.pem".into(),
            ca: Some("clients.pem".into()),
        })
    );
    std::fs::remove_file(path).unwrap();
    assert_eq!(
        NodeConfig::load(None, Overrides::default())
            .unwrap()
            .client_tls,
        None
    );
    for (cert, key, ca, missing) in [
        (Some("c.pem"), None, None, "--client-tls-key"),
        (None, Some("k.pem"), None, "--client-tls-cert"),
        (None, None, Some("ca.pem"), "--client-tls-cert"),
    ] {
        let overrides = Overrides {
            client_tls_cert: cert.map(PathBuf::from),
            client_tls_key: key.map(PathBuf::from),
            client_tls_ca: ca.map(PathBuf::from),
            ..Overrides::default()
        };
        let error = NodeConfig::load(None, overrides).unwrap_err().to_string();
        assert!(error.contains(&format!("{missing} missing")), "{error}");
    }
}
