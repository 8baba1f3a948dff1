//! Probe: how the broker's consumer group treats members (join, leave, kill -9, static ids).
//! `group_probe BROKERS TOPIC GROUP [INSTANCE_ID]` (env `ASSIGNOR`, default
//! `cooperative-sticky`): prints its assignment whenever it changes. Run two or three, kill
//! one with -9, watch the others.
//!
//! What it showed on noida-db 0.2.3 (8 partitions; docs/DESIGN.md, "Scale-out"): with
//! cooperative-sticky the first member gives up half its partitions and the second never
//! receives them (> 60 s, with or without `group.instance.id`); with the eager `range`
//! assignor two members split 4/4, but after a kill -9 the survivor keeps its 4, the dead
//! member's 4 stay unowned, and a new member's join revokes everything and then assigns
//! nothing (> 55 s). So martstream's instances lease partitions in MongoDB instead.
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (brokers, topic, group) = (&args[1], &args[2], &args[3]);
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("partition.assignment.strategy", std::env::var("ASSIGNOR").as_deref().unwrap_or("cooperative-sticky"))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("receive.message.max.bytes", "2147483647")
        .set("enable.auto.commit", "false");
    if let Some(id) = args.get(4) {
        c.set("group.instance.id", id);
    }
    let consumer: BaseConsumer = c.create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let _ = consumer.poll(Duration::from_millis(200));
        let now = consumer
            .assignment()
            .map(|a| a.elements().iter().map(|e| e.partition().to_string()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        if now != last {
            println!("{:6.1}s pid {} assigned [{now}]", started.elapsed().as_secs_f64(), std::process::id());
            last = now;
        }
    }
}
