//! The daemons that leashd supervises.

use std::fmt;

/// A supervised daemon. leashd itself is not a component: it is the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// `leash-policy`: Cedar policies and decisions.
    Policy,
    /// `leash-sensor`: kernel programs.
    Sensor,
    /// `leash-proxy`: the L7 layer.
    Proxy,
}

impl Component {
    /// Every component, in the order leashd starts and reports them.
    pub const ALL: [Component; 3] = [Component::Policy, Component::Sensor, Component::Proxy];

    /// The binary (and program) name, e.g. `leash-policy`.
    pub fn binary(self) -> &'static str {
        match self {
            Component::Policy => "leash-policy",
            Component::Sensor => "leash-sensor",
            Component::Proxy => "leash-proxy",
        }
    }

    /// The short name used for socket files and log fields, e.g. `policy`.
    pub fn short(self) -> &'static str {
        match self {
            Component::Policy => "policy",
            Component::Sensor => "sensor",
            Component::Proxy => "proxy",
        }
    }

    /// Looks a component up by binary or short name.
    pub fn from_name(name: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.binary() == name || c.short() == name)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Component::ALL {
            assert_eq!(Component::from_name(c.binary()), Some(c));
            assert_eq!(Component::from_name(c.short()), Some(c));
        }
        assert_eq!(Component::from_name("leashd"), None);
    }
}
