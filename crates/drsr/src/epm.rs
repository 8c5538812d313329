//! The endpoint mapper (port 135, interface e1af8308-5d1f-11c9-91a4-08002b14a0fa v3.0):
//! `ept_map` (opnum 3) asks on which TCP port an interface listens. Request and answer carry
//! protocol towers: floors of (protocol identifier, data) for the interface, the transfer
//! syntax, connection-oriented RPC, TCP (port) and IP (address).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::RpcError;
use crate::ndr::{Reader, Uuid, Writer};
use crate::rpc::{Connection, NDR};

/// The endpoint mapper's interface.
pub const EPM: (Uuid, u16, u16) = (Uuid::parse("e1af8308-5d1f-11c9-91a4-08002b14a0fa"), 3, 0);
/// Where it listens.
pub const EPM_PORT: u16 = 135;

/// A tower for `interface` over NDR, connection-oriented RPC, TCP and IPv4 (port and address 0:
/// "any", as a query).
pub fn tower(interface: (Uuid, u16, u16)) -> Vec<u8> {
    let mut floors: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let uuid_floor = |uuid: Uuid, major: u16, minor: u16| {
        let mut lhs = vec![0x0d];
        lhs.extend_from_slice(&uuid.to_bytes());
        lhs.extend_from_slice(&major.to_le_bytes());
        (lhs, minor.to_le_bytes().to_vec())
    };
    floors.push(uuid_floor(interface.0, interface.1, interface.2));
    floors.push(uuid_floor(NDR.0, NDR.1 as u16, 0));
    floors.push((vec![0x0b], vec![0, 0])); // connection-oriented RPC
    floors.push((vec![0x07], vec![0, 0])); // TCP, port (big-endian)
    floors.push((vec![0x09], vec![0, 0, 0, 0])); // IPv4 address
    let mut out = (floors.len() as u16).to_le_bytes().to_vec();
    for (lhs, rhs) in floors {
        out.extend_from_slice(&(lhs.len() as u16).to_le_bytes());
        out.extend_from_slice(&lhs);
        out.extend_from_slice(&(rhs.len() as u16).to_le_bytes());
        out.extend_from_slice(&rhs);
    }
    out
}

/// The TCP port and IPv4 address a tower names (`None` when it names neither).
pub fn endpoint_of(tower: &[u8]) -> Result<(Option<u16>, Option<Ipv4Addr>), RpcError> {
    let mut r = Reader::new(tower);
    let floors = r.u16_unaligned("floor count")?;
    let (mut port, mut address) = (None, None);
    for _ in 0..floors {
        let lhs_length = usize::from(r.u16_unaligned("lhs length")?);
        let lhs = r.take(lhs_length, "lhs")?;
        let rhs_length = usize::from(r.u16_unaligned("rhs length")?);
        let rhs = r.take(rhs_length, "rhs")?;
        match (lhs.first(), rhs) {
            (Some(0x07), [high, low]) => port = Some(u16::from_be_bytes([*high, *low])),
            (Some(0x09), [a, b, c, d]) => address = Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => {}
        }
    }
    Ok((port, address))
}

/// The `ept_map` request stub.
pub fn map_request(interface: (Uuid, u16, u16)) -> Vec<u8> {
    let tower = tower(interface);
    let mut w = Writer::default();
    w.referent(); // object: a nil UUID
    w.uuid(Uuid(0, 0, 0, [0; 8]));
    w.referent(); // map_tower
    w.u32(tower.len() as u32);
    w.u32(tower.len() as u32); // conformant array: max count
    w.raw(&tower);
    w.align(4);
    w.raw(&[0; 20]); // entry_handle: a null context handle
    w.u32(4); // max_towers
    w.bytes
}

/// The towers of an `ept_map` answer, after checking its status.
pub fn parse_map_response(stub: &[u8]) -> Result<Vec<Vec<u8>>, RpcError> {
    let mut r = Reader::new(stub);
    r.take(20, "entry_handle")?;
    let count = r.u32("num_towers")? as usize;
    let _max = r.u32("towers max count")?;
    let _offset = r.u32("towers offset")?;
    let actual = r.u32("towers actual count")? as usize;
    if actual < count || actual > 64 {
        return Err(RpcError::Malformed(format!("{count} towers announced, {actual} sent")));
    }
    let mut referents = Vec::with_capacity(actual);
    for _ in 0..actual {
        referents.push(r.u32("tower pointer")?);
    }
    let mut towers = Vec::new();
    for referent in referents {
        if referent == 0 {
            continue;
        }
        let length = r.u32("tower length")? as usize;
        let _max = r.u32("tower max count")?;
        towers.push(r.take(length, "tower")?.to_vec());
        r.align(4)?;
    }
    let status = r.u32("status")?;
    if status != 0 {
        return Err(RpcError::Fault(status));
    }
    towers.truncate(count);
    Ok(towers)
}

/// Asks the endpoint mapper at `host` where `interface` listens over TCP.
pub async fn map(host: IpAddr, interface: (Uuid, u16, u16)) -> Result<SocketAddr, RpcError> {
    let mut epm = Connection::bind(SocketAddr::new(host, EPM_PORT), EPM).await?;
    let answer = epm.call(3, &map_request(interface)).await?;
    for tower in parse_map_response(&answer)? {
        if let (Some(port), _) = endpoint_of(&tower)?
            && port != 0
        {
            return Ok(SocketAddr::new(host, port));
        }
    }
    Err(RpcError::Refused(format!("the endpoint mapper at {host} knows no TCP endpoint of {}", interface.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tower_names_its_endpoint() {
        let mut tower = tower(crate::DRSUAPI);
        assert_eq!(endpoint_of(&tower).ok(), Some((Some(0), Some(Ipv4Addr::UNSPECIFIED))));
        // Port floor: the fourth floor's two rhs bytes, big-endian.
        let at = tower.len() - 4 - 2 - 1 - 2 - 2;
        tower[at..at + 2].copy_from_slice(&49_152u16.to_be_bytes());
        assert_eq!(endpoint_of(&tower).ok().and_then(|(port, _)| port), Some(49_152));
        assert!(endpoint_of(&tower[..10]).is_err(), "a cut tower is an error");
    }

    proptest::proptest! {
        #[test]
        fn any_answer_parses_or_fails_cleanly(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_map_response(&bytes);
            let _ = endpoint_of(&bytes);
        }
    }
}
