//! Prints the SHA1 of the accounting write script, so that `bench/data_plane.py`
//! can run the script alone with `redis-benchmark EVALSHA`: the ceiling any
//! HTTP write can reach while every write keeps the quotas exact.

fn main() {
    println!("{}", cache_shared::quota::write_script_sha());
}
