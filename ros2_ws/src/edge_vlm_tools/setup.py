from setuptools import find_packages, setup

package_name = "edge_vlm_tools"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="edge_vlm maintainers",
    maintainer_email="maintainers@edge-vlm.dev",
    description="ROS 2 tools of edge_vlm: bag player, recorder, graph runner (launch), "
                "single-process graph, demo",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # installed to lib/edge_vlm_tools/ (setup.cfg): `ros2 run edge_vlm_tools edge_vlm_play`
            "edge_vlm_play = edge_vlm_tools.player:main",
            "edge_vlm_record = edge_vlm_tools.recorder:main",
            "edge_vlm_run = edge_vlm_tools.runner:main",
            "edge_vlm_demo = edge_vlm_tools.demo:main",
            # the whole graph in one process and one executor (launch: single_process:=true)
            "edge_vlm_graph = edge_vlm_tools.graph:main",
            # drone + ground hosts in network namespaces (edge-vlm bench multihost; root)
            "edge_vlm_multihost = edge_vlm_tools.multihost:main",
        ],
    },
)
