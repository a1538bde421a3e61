from setuptools import find_packages, setup

package_name = "edge_vlm"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={"edge_vlm": ["checkpoints/*.pt", "checkpoints/*.json", "checkpoints/*.txt"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="edge_vlm maintainers",
    maintainer_email="maintainers@edge-vlm.dev",
    description="edge_vlm core library: event I/O, DVS128 simulator, STTF/ANC models (no rclpy)",
    license="Apache-2.0",
    entry_points={"console_scripts": ["edge-vlm = edge_vlm.cli:main"]},
)
