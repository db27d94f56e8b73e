//! The MPS control double: nvidia-cuda-mps-control's protocol and its
//! semantics — a new percentage applies to clients created afterwards, not to
//! running ones.

use crate::support::*;

const MULTI_WAVE: [&str; 10] = multi_wave("20", "1s", "1000000");

#[test]
fn without_a_daemon_commands_fail_like_the_real_tool() {
    let sim = Sim::new("mps-none");
    let (out, ok) = sim.mps_control("get_server_list\n");
    assert!(!ok);
    assert_eq!(out.trim(), "Cannot find MPS control daemon process");
}

#[test]
fn percentages_apply_to_new_clients_only() {
    let mut sim = Sim::new("mps");
    sim.start_mps_daemon();
    assert_eq!(
        sim.mps_control("get_default_active_thread_percentage\n")
            .0
            .trim(),
        "100.0"
    );
    assert_eq!(
        sim.mps_control("get_server_list\n").0.trim(),
        "",
        "no server before the first client"
    );

    // The first client starts a server and runs on all SMs.
    let first = sim.load(&MULTI_WAVE, &[]);
    assert_eq!(f(&first, "device.sms"), 132.0);
    let servers = sim.mps_control("get_server_list\n").0;
    let server: u32 = servers
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("one server expected: {servers:?}"));
    assert_eq!(
        sim.mps_control(&format!("get_active_thread_percentage {server}\n"))
            .0
            .trim(),
        "100.0"
    );

    // Halve the server's share: the next client gets 66 SMs and runs twice as long.
    assert_eq!(
        sim.mps_control(&format!("set_active_thread_percentage {server} 50\n"))
            .0
            .trim(),
        "50.0"
    );
    let long = multi_wave("20", "3s", "1000000");
    let running = sim.spawn_load(&long, &[]);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let clients = sim.mps_control(&format!("get_client_list {server}\n")).0;
    assert!(
        clients
            .lines()
            .any(|l| l.trim() == running.id().to_string()),
        "client {} not in {clients:?}",
        running.id()
    );
    // NVML lists the server as the compute process and the client under MPS.
    if let Some(lists) = crate::nvml::process_lists(&sim) {
        assert_eq!(
            lists,
            (vec![server], vec![running.id()]),
            "NVML (compute, MPS) process lists"
        );
    }

    // Lower it again while that client runs: it keeps the share it started with.
    sim.mps_control(&format!("set_active_thread_percentage {server} 25\n"));
    let halved = report(running.wait_with_output().unwrap());
    assert_eq!(f(&halved, "device.sms"), 66.0);
    let ratio = f(&halved, "kernel_ms.p50") / f(&first, "kernel_ms.p50");
    assert!(
        (1.9..2.1).contains(&ratio),
        "a running client must keep its 50% share to the end: {ratio}"
    );

    // A client created now gets 25%: 32 SMs, as an H100 reports.
    let quarter = sim.load(&MULTI_WAVE, &[]);
    assert_eq!(f(&quarter, "device.sms"), 32.0);
    // A client's own CUDA_MPS_ACTIVE_THREAD_PERCENTAGE may only lower its share.
    let env_more = sim.load(&MULTI_WAVE, &[("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "80")]);
    assert_eq!(f(&env_more, "device.sms"), 32.0);
    let env_less = sim.load(&MULTI_WAVE, &[("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "10")]);
    assert_eq!(f(&env_less, "device.sms"), 12.0);

    // The default applies to servers started afterwards.
    assert_eq!(
        sim.mps_control("set_default_active_thread_percentage 75\n")
            .0
            .trim(),
        "75.0"
    );
    assert_eq!(
        sim.mps_control(&format!("get_active_thread_percentage {server}\n"))
            .0
            .trim(),
        "25.0"
    );
    sim.mps_control(&format!("shutdown_server {server}\n"));
    assert_eq!(f(&sim.load(&MULTI_WAVE, &[]), "device.sms"), 98.0);

    // Bad commands are answered, not fatal.
    let (out, ok) = sim.mps_control(
        "set_active_thread_percentage 999999 50\nset_default_active_thread_percentage 0\nbogus\n",
    );
    assert!(ok);
    assert!(out.contains("Server 999999 not found"), "{out}");
    assert!(
        out.contains("invalid active thread percentage \"0\""),
        "{out}"
    );
    assert!(out.contains("Unrecognized command \"bogus\""), "{out}");

    // quit stops the daemon.
    sim.mps_control("quit\n");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        sim.mps_control("get_server_list\n").0.trim(),
        "Cannot find MPS control daemon process"
    );
}
