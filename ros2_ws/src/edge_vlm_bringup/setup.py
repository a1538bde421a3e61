from glob import glob

from setuptools import setup

package_name = "edge_vlm_bringup"

setup(
    name=package_name,
    version="0.1.0",
    packages=[],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        # ros2 launch edge_vlm_bringup edge_vlm.launch.py; the graph it starts
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="edge_vlm maintainers",
    maintainer_email="maintainers@edge-vlm.dev",
    description="Bringup of edge_vlm: the node graph (config/graph.yaml) and its launch file",
    license="Apache-2.0",
)
