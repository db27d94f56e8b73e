//! The cluster as placement sees it: nodes with CPU, memory and GPUs (each
//! GPU's free share in thousandths, "milli"), and pods asking for them.

/// One GPU's capacity in milli-GPU.
pub const GPU_MILLI: u32 = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// GPU model (e.g. `T4`, `V100M16`).
    pub model: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub cpu_free: u64,
    pub memory_free: u64,
    /// Free milli-GPU of each GPU.
    pub gpus: Vec<u32>,
}

impl Node {
    pub fn new(name: &str, model: &str, cpu_milli: u64, memory_mib: u64, gpus: usize) -> Node {
        Node {
            name: name.to_string(),
            model: model.to_string(),
            cpu_milli,
            memory_mib,
            cpu_free: cpu_milli,
            memory_free: memory_mib,
            gpus: vec![GPU_MILLI; gpus],
        }
    }

    pub fn gpu_free_milli(&self) -> u64 {
        self.gpus.iter().map(|&g| g as u64).sum()
    }

    pub fn gpu_capacity_milli(&self) -> u64 {
        self.gpus.len() as u64 * GPU_MILLI as u64
    }
}

/// What a pod asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// Whole GPUs (more than one), or 1 with a share of `gpu_milli`, or 0.
    pub num_gpu: u32,
    /// The share of one GPU when `num_gpu == 1` (1–1000).
    pub gpu_milli: u32,
    /// GPU models the pod accepts; empty: any.
    pub gpu_spec: Vec<String>,
}

impl Pod {
    /// Milli-GPU the pod takes in all.
    pub fn gpu_request_milli(&self) -> u64 {
        match self.num_gpu {
            0 => 0,
            1 => self.gpu_milli as u64,
            n => n as u64 * GPU_MILLI as u64,
        }
    }

    pub fn accepts(&self, model: &str) -> bool {
        self.gpu_spec.is_empty() || self.gpu_spec.iter().any(|m| m == model)
    }
}

/// Where a pod goes: a node and, for each GPU it uses, the index and the
/// milli taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub node: usize,
    pub gpus: Vec<(usize, u32)>,
}

/// The cluster: nodes and what is allocated on them.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    pub fn gpu_capacity_milli(&self) -> u64 {
        self.nodes.iter().map(Node::gpu_capacity_milli).sum()
    }

    pub fn gpu_allocated_milli(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.gpu_capacity_milli() - n.gpu_free_milli())
            .sum()
    }

    /// Takes the resources of `p` for `pod` (checked by the caller with [`feasible`]).
    pub fn bind(&mut self, pod: &Pod, p: &Placement) {
        let n = &mut self.nodes[p.node];
        n.cpu_free -= pod.cpu_milli;
        n.memory_free -= pod.memory_mib;
        for &(g, milli) in &p.gpus {
            n.gpus[g] -= milli;
        }
    }
}

/// Whether `node` can hold `pod` at all: CPU, memory, GPU model and enough
/// GPU capacity of the right shape (a share of one GPU, or whole free GPUs).
pub fn feasible(node: &Node, pod: &Pod) -> bool {
    if node.cpu_free < pod.cpu_milli || node.memory_free < pod.memory_mib {
        return false;
    }
    match pod.num_gpu {
        0 => true,
        1 => pod.accepts(&node.model) && node.gpus.iter().any(|&g| g >= pod.gpu_milli),
        n => {
            pod.accepts(&node.model)
                && node.gpus.iter().filter(|&&g| g == GPU_MILLI).count() >= n as usize
        }
    }
}
