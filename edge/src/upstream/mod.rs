//! The edge's upstream side: which pollers there are and which one owns
//! each event ([`pollers`]: `--poller` targets, DNS discovery, health,
//! rendezvous ownership), the HTTP/2 connections to them ([`channels`]:
//! streams leased per connection up to the poller's limit), and how the
//! edge proves itself to them ([`tls`], [`token`]); each event's
//! subscription and its failover between pollers ([`failover`]).

pub mod channels;
pub mod failover;
pub mod pollers;
pub mod tls;
pub mod token;
